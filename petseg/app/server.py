"""Grand Challenge "invoke" mode: the ensemble stays loaded and serves one case per HTTP request.

`app.py` is the entry point; this module holds the logic. The contract followed, as the platform's
invoke-mode algorithm templates and runtime (SageMaker Shim) define it:

- The image carries `LABEL org.grand-challenge.api-method="invoke"` (the default method, "exec", runs
  `process.py` once per job instead). The platform starts the container's own entrypoint once, polls
  `GET /health` on port 4743 until it answers 200, then for every job places the inputs under `/input`,
  sends `POST /invoke` and, on 201, collects `/output`. Any other status fails that job.
- `GET /health` answers 200 only once the ensemble is in memory. While it loads (in the background, so the
  port answers at once) it answers 503 with `Retry-After`; it never redirects. The ensemble is loaded once,
  at start-up, never per request. If it cannot be loaded, the server stops with the one-line error and
  the exit code of `process.py` (4 for a bad model folder), rather than staying up unhealthy.
- `POST /invoke` carries no case data: the templates define no request body and any body is ignored. The
  case is whatever `/input` holds at that moment (`/input/inputs.json` is ignored, as in `process.py`).
- Between jobs the platform points `/input` and `/output` at each job's own folders (links) and empties
  them, so both paths are looked up again on every request, never resolved once at start-up, and no
  state is kept in files between requests.
- The platform sends one job at a time; requests are serialised here anyway (the GPU holds one
  ensemble, and `/input` and `/output` are single folders): a second request waits for the first.

Answers (JSON; errors as `{"detail": "<one line>"}`, the same line `process.py` prints):

- 201: the mask and `data-centric-model.json` were written (`{"mask": <path in /output>, "seconds": ...}`).
- 422: the case in `/input` cannot be segmented (missing, ambiguous, unreadable or corrupt image, ...);
  the message names the file. Repeating the request on the same input gives the same answer.
- 500: anything else (output not writable, out of memory, a bug). The server stays up for the next job.
- 503: the ensemble is not loaded yet.

A failed request leaves nothing in the output folder: the pipeline writes atomically, and whatever the
request created there (folders included) is removed again. Outputs that an earlier request of this server
wrote to the same output path are removed before the next case runs, so a local output folder always
holds the latest case's outputs or none, never a stale mask that passes for the current case's (and never
two masks, which the platform rejects). Nothing else in the output folder is touched.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from petseg.app.arguments import command_parser, parse_arguments
from petseg.app.runtime import add_container_arguments, positive_seconds
from petseg.errors import InputError, PetsegError

if TYPE_CHECKING:  # torch and MONAI load with the ensemble, after the port answers
    from collections.abc import AsyncIterator

    from petseg.inference.predict import Predictor
    from petseg.inference.timing import StageTimer

log = logging.getLogger("petseg")

DEFAULT_HOST = "0.0.0.0"  # every interface: the platform connects from outside the container
DEFAULT_PORT = 4743  # fixed by the platform
RETRY_AFTER_S = 5
DEFAULT_REQUEST_TIMEOUT_S = 1800.0  # above autoPET IV's 15 minutes a case, with room for a slow GPU

Runner = Callable[[Path, Path, "Predictor", "StageTimer"], Path]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer without the HTTP: the service is tested without a server."""

    status: int
    body: dict[str, Any]


def error_reply(error: Exception) -> Reply:
    """A failed case as status and one line: 422 for the input's fault, 500 for everything else."""
    if isinstance(error, InputError):
        return Reply(422, {"detail": str(error)})
    if isinstance(error, PetsegError):
        return Reply(500, {"detail": str(error)})
    if isinstance(error, MemoryError):
        return Reply(500, {"detail": "out of memory"})
    message = " ".join(str(error).split()) or type(error).__name__
    return Reply(500, {"detail": f"internal error: {type(error).__name__}: {message}"})


def snapshot(folder: Path) -> set[Path] | None:
    """Every path under `folder` (empty if it does not exist); None if it cannot be listed."""
    try:
        return set(folder.rglob("*")) if folder.exists() else set()
    except OSError:
        return None


def remove_new_entries(folder: Path, before: set[Path] | None, folder_existed: bool) -> list[Path]:
    """Remove what appeared under `folder` since `before`: files and now-empty folders only.

    Never a tree removal: a folder that still holds something that was there before stays.
    """
    if before is None:  # the folder could not be listed: nothing can be told apart, so nothing is touched
        return []
    after = snapshot(folder) or set()
    removed = []
    for path in sorted(after - before, key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    if not folder_existed and folder.is_dir() and not folder.is_symlink():
        try:
            folder.rmdir()
            removed.append(folder)
        except OSError:
            pass
    return removed


def _release_memory(predictor: Predictor | None) -> None:
    """Give a failed case's memory back before the next case: the process outlives every request."""
    gc.collect()
    if predictor is not None and predictor.compute.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


@dataclass
class InvokeService:
    """The loaded ensemble and the serialised pipeline behind the HTTP routes."""

    input_dir: Path
    output_dir: Path
    loader: Callable[[], Predictor]
    runner: Runner | None = None  # default: petseg.inference.pipeline.run_grand_challenge
    on_load_failure: Callable[[], None] = lambda: None
    predictor: Predictor | None = None
    load_error: BaseException | None = None
    # A request still running after this many seconds is answered 500 and abandoned; until it ends,
    # /health and /invoke answer 503 (a thread cannot be killed: its case may hold the input for ever).
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _state: threading.Lock = field(default_factory=threading.Lock)
    _stuck: tuple[int, float] | None = None  # (request number, its start on time.monotonic) while abandoned
    _previous: list[Path] = field(default_factory=list)
    _count: itertools.count = field(default_factory=lambda: itertools.count(1))

    def load(self) -> None:
        """Load the ensemble (once); on failure record the error and ask the server to stop."""
        try:
            self.predictor = self.loader()
        except BaseException as error:  # re-raised by the main thread once the server has stopped
            self.load_error = error
            self.on_load_failure()
            return
        log.info("ready: answering /invoke")

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="petseg-load-model", daemon=True)
        thread.start()
        return thread

    def health(self) -> Reply:
        stuck = self._stuck
        if stuck is not None:
            number, started = stuck
            return Reply(
                503,
                {
                    "detail": f"request {number} has run for {time.monotonic() - started:.0f} s, over the "
                    f"limit of {self.request_timeout_s:g} s, and still holds the pipeline"
                },
            )
        if self.predictor is not None:
            return Reply(200, {"status": "ready"})
        if self.load_error is not None:
            return Reply(503, {"detail": f"the model could not be loaded: {self.load_error}"})
        return Reply(503, {"detail": "loading the model"})

    def invoke(self) -> Reply:
        """Segment the case in the input folder; one request at a time, each within the time limit."""
        if self.predictor is None or self._stuck is not None:
            return self.health()
        with self._lock:
            if self._stuck is not None:
                return self.health()
            number = next(self._count)
            if self.request_timeout_s is None:
                return self._invoke(number)
            return self._invoke_within_limit(number, self.request_timeout_s)

    def _invoke_within_limit(self, number: int, limit_s: float) -> Reply:
        """The request in a worker thread: answered when it ends, or abandoned once over `limit_s`.

        An abandoned request's thread runs on; when it ends, whatever it wrote is removed (its client
        was told it failed) and the server serves again.
        """
        outcome: dict[str, Any] = {}
        started = time.monotonic()

        def settle() -> bool:  # under self._state, once the case is written: abandoned, or finished now
            if outcome.get("abandoned"):
                return True
            outcome["finished"] = True
            return False

        def work() -> None:
            reply = self._invoke(number, settle)
            with self._state:
                outcome["reply"] = reply
                if outcome.get("abandoned"):
                    self._stuck = None
                    log.warning(
                        "invoke %d: ended %.0f s after it started, after it was abandoned: serving again",
                        number,
                        time.monotonic() - started,
                    )

        worker = threading.Thread(target=work, name=f"petseg-invoke-{number}", daemon=True)
        worker.start()
        worker.join(limit_s)
        with self._state:
            finished = "reply" in outcome or outcome.get("finished", False)
            if not finished:
                outcome["abandoned"] = True
                self._stuck = (number, started)
        if finished:  # done just in time: its reply is a moment away
            worker.join()
            return outcome["reply"]
        message = (
            f"the case did not finish within {limit_s:g} s (--request-timeout); the request is abandoned "
            "and /health answers 503 until it ends"
        )
        log.error("invoke %d: %s", number, message)
        return Reply(500, {"detail": message})

    def _invoke(self, number: int, settle: Callable[[], bool] = lambda: False) -> Reply:
        from petseg.inference.timing import StageTimer
        from petseg.io import DATA_CENTRIC_JSON, is_image_file

        runner = self.runner
        if runner is None:
            from petseg.inference.pipeline import run_grand_challenge as runner

        output_dir = self.output_dir
        for stale in self._previous:  # this server's own outputs of an earlier request, by configured path
            try:
                stale.unlink(missing_ok=True)
            except OSError as error:
                log.warning("invoke %d: cannot remove the earlier output %s: %s", number, stale, error)
        self._previous = []
        folder_existed = output_dir.exists()
        before = snapshot(output_dir)
        timer = StageTimer(prefix=f"invoke {number}: ")
        log.info("invoke %d: %s -> %s", number, self.input_dir, output_dir)
        mask_path: Path | None = None
        try:
            mask_path = runner(self.input_dir, output_dir, self.predictor, timer)
        except Exception as error:
            reply = error_reply(error)
            traceback = bool(os.environ.get("PETSEG_DEBUG")) and not isinstance(error, PetsegError)
            log.error(
                "invoke %d: failed (%d): %s", number, reply.status, reply.body["detail"], exc_info=traceback
            )
            return reply
        finally:
            if mask_path is None:
                removed = remove_new_entries(output_dir, before, folder_existed)
                if removed:
                    log.info("invoke %d: removed %d partial output path(s)", number, len(removed))
                _release_memory(self.predictor)
        with self._state:
            if settle():  # abandoned: its client was already told it failed, so what it wrote must go
                removed = remove_new_entries(output_dir, before, folder_existed)
                log.warning("invoke %d: abandoned; removed its %d output path(s)", number, len(removed))
                return Reply(500, {"detail": "abandoned after the time limit"})
        self._previous = [mask_path, output_dir / DATA_CENTRIC_JSON]
        others = sorted(p.name for p in mask_path.parent.iterdir() if p != mask_path and is_image_file(p))
        if others:
            log.warning(
                "invoke %d: %s also holds %s, not written by this request: the platform accepts one image",
                number,
                mask_path.parent,
                ", ".join(others),
            )
        log.info("invoke %d: wrote %s (total %.2f s)", number, mask_path, timer.total)
        relative = mask_path.relative_to(output_dir).as_posix()
        return Reply(201, {"mask": relative, "seconds": round(timer.total, 2)})


def create_app(service: InvokeService) -> FastAPI:
    """The HTTP shell: two routes over `service`; loading starts with the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start_loading()
        yield

    app = FastAPI(
        title="petseg",
        lifespan=lifespan,
        redirect_slashes=False,  # the platform's health check must never see a redirect
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def respond(reply: Reply) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if reply.status == 503 else None
        return JSONResponse(reply.body, status_code=reply.status, headers=headers)

    @app.get("/health")
    async def health() -> JSONResponse:  # on the event loop: answers while a case runs
        return respond(service.health())

    @app.post("/invoke")
    def invoke() -> JSONResponse:  # a plain function: FastAPI runs it in a worker thread
        return respond(service.invoke())

    return app


def server_parser(default_model: Path) -> argparse.ArgumentParser:
    parser = command_parser(
        "app.py", "Serve the Grand-Challenge invoke API (GET /health, POST /invoke), autoPET contract."
    )
    add_container_arguments(parser, default_model)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--request-timeout",
        type=positive_seconds,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help=f"a case still running after this long is answered 500, and /health answers 503 until it "
        f"ends (default {DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from petseg.app.runtime import load_predictor
    from petseg.inference.pipeline import run_grand_challenge
    from petseg.inference.timing import StageTimer

    tracer = None if args.tracer == "auto" else args.tracer
    service = InvokeService(
        input_dir=args.input,
        output_dir=args.output,
        runner=lambda i, o, predictor, timer: run_grand_challenge(i, o, predictor, timer, tracer=tracer),
        request_timeout_s=args.request_timeout,
        loader=lambda: load_predictor(args.model, args.device, StageTimer(), args.precision, args.compile),
    )
    logging.getLogger("uvicorn").setLevel(logging.INFO)  # its lines in petseg's format, through the root
    config = uvicorn.Config(create_app(service), host=args.host, port=args.port, log_config=None)
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    service.on_load_failure = stop
    log.info("serving on %s:%d; loading the model from %s", args.host, args.port, args.model)
    server.run()
    if service.load_error is not None:
        raise service.load_error  # reported like process.py: one line, its exit code
    return 0


def server_main(argv: Sequence[str] | None = None, script_dir: Path | None = None) -> int:
    """The Grand-Challenge invoke-mode entry point (`app.py`)."""
    from petseg.app.console import setup_logging
    from petseg.app.runtime import default_model_dir, guarded, private_caches

    args = parse_arguments(server_parser(default_model_dir(script_dir)), argv)
    setup_logging(args.verbose)
    with private_caches():
        return guarded(_serve, args)
