"""The RunAgent runner: ``python3 -u -X utf8 <this folder> --fd 3``.

The code is the _runagent_runner package beside this file."""

from _runagent_runner.startup import main

main()
