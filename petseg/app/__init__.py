"""The entry points: the `petseg` command line, process.py's and app.py's runtime, the invoke server."""
