"""Invoke mode: app.py as a real HTTP server over phantom cases, and the service behind it in-process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import SimpleITK as sitk
from conftest import REPO, all_files, assert_binary_mask_on_grid, write_gc_input

from petseg.app.server import DEFAULT_PORT, InvokeService, Reply, error_reply, server_parser
from petseg.errors import InputError, ModelError, OutputError
from petseg.io import CT_FOLDER, MASK_FOLDER, PET_FOLDER, write_outputs
from petseg.model.untrained import create_untrained_model
from petseg.synthetic import make_case

STARTUP_TIMEOUT_S = 240  # torch and MONAI import slowly on a busy 2-core machine
REQUEST_TIMEOUT_S = 300


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, method: str = "GET", timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, dict]:
    """(status, JSON body) of one request; error statuses are answers here, not exceptions."""
    data = b"" if method == "POST" else None
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method=method), timeout=timeout
        ) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def point(link: Path, target: Path) -> None:
    """Re-point a symlink atomically, as the platform re-points /input and /output for each job."""
    fresh = link.with_name(link.name + ".new")
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(target, target_is_directory=True)
    os.replace(fresh, link)


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def assert_mask_contract(output: Path, pet: sitk.Image, pet_uuid: str) -> None:
    files = all_files(output)
    assert [p.relative_to(output) for p in files] == [
        Path("data-centric-model.json"),
        MASK_FOLDER / f"{pet_uuid}.mha",
    ]
    assert json.loads((output / "data-centric-model.json").read_text()) is False
    mask = sitk.ReadImage(str(output / MASK_FOLDER / f"{pet_uuid}.mha"))
    assert_binary_mask_on_grid(mask, pet)


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: Path
    root: Path
    input_link: Path
    output_link: Path
    cases: dict[str, tuple[Path, sitk.Image | None]]


def start_app(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would stall the server
        return subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """app.py on a free local port with a random one-fold ensemble, healthy, and three input cases."""
    root = tmp_path_factory.mktemp("invoke")
    create_untrained_model(root / "model", folds=1, seed=0)
    cases: dict[str, tuple[Path, sitk.Image | None]] = {}
    psma = make_case(seed=11, tracer="psma", size="tiny", grid="psma-200", ct_own_grid=False)
    write_gc_input(root / "case-psma", psma.ct, psma.pet, "a0000000-ct", "a0000000-pet")
    cases["psma"] = (root / "case-psma", psma.pet)
    fdg = make_case(seed=12, tracer="fdg", size="tiny", grid="fdg-400", ct_own_grid=True)
    write_gc_input(root / "case-fdg", fdg.ct, fdg.pet, "b0000000-ct", "b0000000-pet")
    cases["fdg"] = (root / "case-fdg", fdg.pet)
    bad = root / "case-bad"  # a PET cut short inside its header, next to a good CT
    (bad / CT_FOLDER).mkdir(parents=True)
    (bad / PET_FOLDER).mkdir(parents=True)
    (bad / CT_FOLDER / "c0000000-ct.mha").write_bytes(
        (root / "case-psma" / CT_FOLDER / "a0000000-ct.mha").read_bytes()
    )
    pet_bytes = (root / "case-psma" / PET_FOLDER / "a0000000-pet.mha").read_bytes()
    (bad / PET_FOLDER / "c0000000-pet.mha").write_bytes(pet_bytes[:60])
    cases["bad"] = (bad, None)
    for name in ("out-1", "out-2"):
        (root / name).mkdir()
    input_link, output_link = root / "input", root / "output"
    point(input_link, root / "case-psma")
    point(output_link, root / "out-1")

    port = free_port()
    log = root / "server.log"
    args = ["--input", input_link, "--output", output_link, "--model", root / "model"]
    process = start_app([*map(str, args), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"app.py exited with {process.returncode}:\n{log_tail(log)}"
            try:
                if request(f"{url}/health", timeout=5)[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, (
                f"/health not 200 after {STARTUP_TIMEOUT_S} s:\n{log_tail(log)}"
            )
            time.sleep(0.5)
        yield Served(url, process, log, root, input_link, output_link, cases)
    finally:
        stop(process)


# ---------------------------------------------------------------- the real server


def test_app_py_serves_good_and_bad_cases_and_stays_up(served: Served) -> None:
    root, url = served.root, served.url
    status, body = request(f"{url}/health")
    assert (status, body) == (200, {"status": "ready"})

    # 1. a good case: the output contract on the PET's exact grid
    point(served.input_link, served.cases["psma"][0])
    status, body = request(f"{url}/invoke", "POST")
    assert status == 201, f"{body}\n{log_tail(served.log)}"
    assert body["mask"] == f"{MASK_FOLDER.as_posix()}/a0000000-pet.mha"
    assert_mask_contract(root / "out-1", served.cases["psma"][1], "a0000000-pet")

    # 2. a corrupt PET: 4xx with one line naming the file; the output folder holds nothing afterwards,
    # neither a partial output nor the previous case's mask posing as this one's
    point(served.input_link, served.cases["bad"][0])
    status, body = request(f"{url}/invoke", "POST")
    assert status == 422, body
    detail = body["detail"]
    assert "\n" not in detail
    assert "c0000000-pet.mha" in detail
    assert "PET" in detail
    assert all_files(root / "out-1") == []
    assert request(f"{url}/health") == (200, {"status": "ready"})

    # 3. the server is still up: the next job (new input and output folders, CT on its own grid) succeeds
    point(served.input_link, served.cases["fdg"][0])
    point(served.output_link, root / "out-2")
    status, body = request(f"{url}/invoke", "POST")
    assert status == 201, f"{body}\n{log_tail(served.log)}"
    assert_mask_contract(root / "out-2", served.cases["fdg"][1], "b0000000-pet")
    assert all_files(root / "out-1") == []
    assert served.process.poll() is None
    assert "invoke 3: wrote" in served.log.read_text()


def test_unknown_paths_are_404_not_redirects(served: Served) -> None:
    assert request(f"{served.url}/health/")[0] == 404
    assert request(f"{served.url}/invoke", "GET")[0] == 405


def test_app_py_stops_with_one_line_when_the_model_cannot_be_loaded(tmp_path: Path) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    port = free_port()
    log = tmp_path / "server.log"
    args = ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model", str(empty)]
    process = start_app([*args, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)], log)
    statuses = set()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not listening yet
                statuses.add(request(f"http://127.0.0.1:{port}/health", timeout=5)[0])
            time.sleep(0.2)
        assert process.poll() == ModelError.exit_code, log_tail(log)
    finally:
        stop(process)
    assert 200 not in statuses
    errors = [line for line in log.read_text().splitlines() if line.startswith("petseg: error:")]
    assert len(errors) == 1, log_tail(log)
    assert str(empty) in errors[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- arguments


def test_arguments_default_to_the_container_paths_and_port() -> None:
    args = server_parser(Path("/opt/ml/model")).parse_args([])
    assert args.input == Path("/input")
    assert args.output == Path("/output")
    assert args.model == Path("/opt/ml/model")
    assert args.port == DEFAULT_PORT == 4743
    assert args.host == "0.0.0.0"
    assert args.device == "auto"


def test_arguments_override_the_defaults_for_local_runs() -> None:
    argv = ["--input", "in", "--output", "out", "--port", "8001", "--model", "m", "--device", "cpu"]
    args = server_parser(Path("/opt/ml/model")).parse_args([*argv, "--host", "127.0.0.1"])
    assert (args.input, args.output, args.model) == (Path("in"), Path("out"), Path("m"))
    assert (args.port, args.device, args.host) == (8001, "cpu", "127.0.0.1")
    with pytest.raises(SystemExit):
        server_parser(Path("m")).parse_args(["--device", "tpu"])


# ---------------------------------------------------------------- the service, without HTTP

FAKE_PREDICTOR = SimpleNamespace(compute=SimpleNamespace(device=SimpleNamespace(type="cpu")))


def writing_runner(name: str):
    """A stand-in for the pipeline that writes the real output contract for a PET named `name`."""

    def run(input_dir: Path, output_dir: Path, predictor, timer) -> Path:
        return write_outputs(sitk.Image([4, 4, 4], sitk.sitkUInt8), output_dir, name)

    return run


def failing_runner(error: Exception, partial: bool = True):
    """A stand-in that leaves partial files (and folders) behind before failing."""

    def run(input_dir: Path, output_dir: Path, predictor, timer) -> Path:
        if partial:
            (output_dir / MASK_FOLDER).mkdir(parents=True, exist_ok=True)
            (output_dir / MASK_FOLDER / "half.mha").write_bytes(b"partial")
            (output_dir / "scratch" / "deeper").mkdir(parents=True)
        raise error

    return run


def ready_service(tmp_path: Path, runner) -> InvokeService:
    service = InvokeService(
        tmp_path / "input", tmp_path / "output", loader=lambda: FAKE_PREDICTOR, runner=runner
    )
    service.load()
    return service


def test_not_healthy_and_not_invokable_until_the_ensemble_is_loaded(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_loader():
        assert release.wait(30)
        return FAKE_PREDICTOR

    service = InvokeService(tmp_path, tmp_path / "out", loader=slow_loader, runner=writing_runner("x"))
    thread = service.start_loading()
    assert service.health().status == 503
    assert service.invoke() == Reply(503, {"detail": "loading the model"})
    assert not (tmp_path / "out").exists()
    release.set()
    thread.join(30)
    assert service.health() == Reply(200, {"status": "ready"})
    assert service.invoke().status == 201


def test_a_load_failure_is_reported_and_stops_the_server(tmp_path: Path) -> None:
    stopped = []

    def broken_loader():
        raise ModelError(f"{tmp_path}/model.json: model card not found")

    service = InvokeService(
        tmp_path, tmp_path / "out", loader=broken_loader, on_load_failure=lambda: stopped.append(1)
    )
    service.load()
    assert stopped == [1]
    assert isinstance(service.load_error, ModelError)
    reply = service.health()
    assert reply.status == 503
    assert "model card not found" in reply.body["detail"]


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (
            InputError("/input/images/pet/x.mha: cannot read PET image"),
            422,
            "/input/images/pet/x.mha: cannot read",
        ),
        (OutputError("/output/images: cannot write here"), 500, "/output/images: cannot write here"),
        (ModelError("fold0.safetensors: corrupt"), 500, "fold0.safetensors: corrupt"),
        (MemoryError(), 500, "out of memory"),
        (RuntimeError("boom\n  at line 2"), 500, "internal error: RuntimeError: boom at line 2"),
    ],
)
def test_errors_map_to_a_status_and_one_line(error: Exception, status: int, detail: str) -> None:
    reply = error_reply(error)
    assert reply.status == status
    assert reply.body["detail"].startswith(detail)
    assert "\n" not in reply.body["detail"]


def test_a_failed_request_leaves_nothing_behind_and_keeps_what_was_there(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "notes.txt").write_text("not ours")
    service = ready_service(tmp_path, failing_runner(InputError("/input/images/pet/p.mha: file is empty")))
    reply = service.invoke()
    assert reply == Reply(422, {"detail": "/input/images/pet/p.mha: file is empty"})
    assert sorted(p.relative_to(output) for p in output.rglob("*")) == [Path("notes.txt")]


def test_a_failed_request_removes_an_output_folder_it_created(tmp_path: Path) -> None:
    service = ready_service(tmp_path, failing_runner(RuntimeError("boom")))
    assert service.invoke().status == 500
    assert not (tmp_path / "output").exists()
    assert service.health().status == 200


def test_each_request_replaces_this_servers_previous_outputs(tmp_path: Path) -> None:
    output = tmp_path / "output"
    service = ready_service(tmp_path, writing_runner("first"))
    assert service.invoke() == Reply(201, {"mask": f"{MASK_FOLDER.as_posix()}/first.mha", "seconds": 0.0})
    service.runner = writing_runner("second")
    assert service.invoke().status == 201
    assert [p.name for p in all_files(output)] == ["data-centric-model.json", "second.mha"]
    service.runner = failing_runner(InputError("bad"), partial=False)
    assert service.invoke().status == 422
    assert all_files(output) == []  # no stale mask that could pass for the failed case's
    service.runner = writing_runner("third")
    assert service.invoke().status == 201
    assert [p.name for p in all_files(output)] == ["data-centric-model.json", "third.mha"]


def test_requests_run_one_at_a_time(tmp_path: Path) -> None:
    running, most = [0], [0]
    guard = threading.Lock()

    def slow(input_dir: Path, output_dir: Path, predictor, timer) -> Path:
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with guard:
            running[0] -= 1
        return writing_runner("case")(input_dir, output_dir, predictor, timer)

    service = ready_service(tmp_path, slow)
    replies: list[Reply] = []
    threads = [threading.Thread(target=lambda: replies.append(service.invoke())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [reply.status for reply in replies] == [201, 201, 201]
    assert most[0] == 1


def test_a_request_over_the_time_limit_is_abandoned_and_health_says_so_until_it_ends(tmp_path: Path) -> None:
    """A case that hangs (its input a FIFO, say) must not hold the server with /health still answering 200:
    the request is answered 500 at the limit, the server answers 503 while the case runs on, and what the
    abandoned case wrote when it finally ended is removed."""
    release = threading.Event()

    def hanging(input_dir: Path, output_dir: Path, predictor, timer) -> Path:
        assert release.wait(30)
        return writing_runner("late")(input_dir, output_dir, predictor, timer)

    service = ready_service(tmp_path, hanging)
    service.request_timeout_s = 0.3
    started = time.monotonic()
    reply = service.invoke()
    assert reply.status == 500
    assert "did not finish within 0.3 s" in reply.body["detail"]
    assert time.monotonic() - started < 10
    health = service.health()
    assert health.status == 503
    assert "request 1 has run for" in health.body["detail"]
    assert service.invoke().status == 503  # nothing else runs while the abandoned case holds the pipeline
    release.set()
    deadline = time.monotonic() + 30
    while service.health().status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.health() == Reply(200, {"status": "ready"})
    assert all_files(tmp_path / "output") == []  # the abandoned case's late outputs were removed
    service.runner = writing_runner("next")
    assert service.invoke().status == 201
    assert [p.name for p in all_files(tmp_path / "output")] == ["data-centric-model.json", "next.mha"]


def test_a_request_within_the_time_limit_is_answered_as_usual(tmp_path: Path) -> None:
    service = ready_service(tmp_path, writing_runner("quick"))
    service.request_timeout_s = 30
    assert service.invoke().status == 201
    assert service.health().status == 200


def test_request_timeout_is_an_option_of_app_py() -> None:
    assert server_parser(Path("m")).parse_args(["--request-timeout", "90"]).request_timeout == 90
    with pytest.raises(SystemExit):
        server_parser(Path("m")).parse_args(["--request-timeout", "0"])


def test_a_fifo_as_input_is_refused_in_invoke_mode_without_hanging(tmp_path: Path) -> None:
    """The real pipeline on a PET whose header names a FIFO for its voxel data: 422 at once, no hang."""
    from petseg.inference.pipeline import run_grand_challenge

    def runner(input_dir: Path, output_dir: Path, predictor, timer) -> Path:
        return run_grand_challenge(input_dir, output_dir, predictor, timer)

    pet_dir, ct_dir = tmp_path / "input" / PET_FOLDER, tmp_path / "input" / CT_FOLDER
    pet_dir.mkdir(parents=True)
    ct_dir.mkdir(parents=True)
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkFloat32), str(ct_dir / "ct.mha"))
    os.mkfifo(pet_dir / "voxels.raw")
    (pet_dir / "pet.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n"
        "ElementDataFile = voxels.raw\n"
    )
    service = ready_service(tmp_path, runner)
    service.request_timeout_s = 60
    started = time.monotonic()
    reply = service.invoke()
    assert reply.status == 422, reply
    assert "voxels.raw" in reply.body["detail"]
    assert "not a regular file" in reply.body["detail"]
    assert time.monotonic() - started < 30
    assert service.health().status == 200


def test_an_input_that_vanishes_mid_request_is_answered_422(tmp_path: Path, monkeypatch) -> None:
    """The platform (or a user) removes the PET while the request reads it: the input's fault, not 500."""
    import petseg.io.files as pio
    from petseg.inference.pipeline import run_grand_challenge

    case = make_case(seed=3, index=0, tracer="fdg", size="tiny", lesion_free=True)
    write_gc_input(tmp_path / "input", case.ct, case.pet, "ct", "pet")
    real = pio._check_data_source

    def vanish(path: Path, role: str) -> None:
        if role == "PET":
            path.unlink()
        real(path, role)

    monkeypatch.setattr(pio, "_check_data_source", vanish)
    service = ready_service(tmp_path, lambda i, o, p, t: run_grand_challenge(i, o, p, t))
    reply = service.invoke()
    assert reply.status == 422, reply
    assert "pet.mha: cannot read PET image: No such file" in reply.body["detail"]


def _header_pointing_at(data_file: str):
    def build(pet_dir: Path) -> None:
        (pet_dir / "pet.mha").write_text(
            "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n"
            f"ElementDataFile = {data_file}\n"
        )

    return build


def _non_utf8_name(pet_dir: Path) -> None:
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkFloat32), str(pet_dir / "pet.mha"))
    os.rename(pet_dir / "pet.mha", os.path.join(os.fsencode(pet_dir), b"pet-\xff.mha"))


HOSTILE_PETS = {
    "/etc/passwd": (_header_pointing_at("/etc/passwd"), "only a file in the image's own folder"),
    "/dev/zero": (_header_pointing_at("/dev/zero"), "only a file in the image's own folder"),
    "LIST": (_header_pointing_at("LIST"), "several files"),
    "not UTF-8": (_non_utf8_name, "not valid UTF-8"),
}


@pytest.mark.parametrize("name", HOSTILE_PETS)
def test_hostile_headers_and_names_are_422_in_invoke_mode_and_the_server_stays_up(
    tmp_path: Path, name: str
) -> None:
    from petseg.inference.pipeline import run_grand_challenge

    build, message = HOSTILE_PETS[name]
    pet_dir, ct_dir = tmp_path / "input" / PET_FOLDER, tmp_path / "input" / CT_FOLDER
    pet_dir.mkdir(parents=True)
    ct_dir.mkdir(parents=True)
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkFloat32), str(ct_dir / "ct.mha"))
    build(pet_dir)
    service = ready_service(tmp_path, lambda i, o, p, t: run_grand_challenge(i, o, p, t))
    reply = service.invoke()
    assert reply.status == 422, reply
    assert message in reply.body["detail"]
    assert "\n" not in reply.body["detail"]
    json.dumps(reply.body, ensure_ascii=False).encode("utf-8")  # the reply can be sent as UTF-8
    assert service.health().status == 200
    assert not (tmp_path / "output").exists()
