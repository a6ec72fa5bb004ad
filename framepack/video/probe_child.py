"""The encoder probe's child process (started by `framepack.video.probe.EncoderProber`): it opens encoders in an
empty temporary working folder and answers one JSON line per probe. A module of its own so that the prober, which
`framepack.video.codecs` uses, does not import `codecs` back."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import IO

from framepack.video.codec_options import FILES, EncoderError
from framepack.video.codecs import open_in_memory
from framepack.video.probe import REPLY


def serve(requests: IO[str] | None = None, replies: IO[str] | None = None) -> None:
    """The child's loop: one JSON request per line in, one marked JSON reply per line out, in an empty folder."""
    requests, replies = requests or sys.stdin, replies or sys.stdout
    folder = tempfile.mkdtemp(prefix="framepack-probe-")
    os.chdir(folder)
    try:
        for line in requests:
            settings = json.loads(line)
            try:
                open_in_memory(**settings)
                reply = {}
            except EncoderError as error:
                reply = {"field": error.field, "message": str(error).removeprefix(f"{error.field}: ")}
            left = sorted(os.listdir(folder))
            if left:
                for name in left:
                    path = os.path.join(folder, name)
                    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
                codec, options = settings["codec"], settings["options"]
                reply = {
                    "field": "codec_options",
                    "message": f"{codec} wrote files ({', '.join(left)}) with {options}: {FILES}",
                }
            replies.write(f"\n{REPLY}{json.dumps(reply)}\n")
            replies.flush()
    finally:
        os.chdir(tempfile.gettempdir())
        shutil.rmtree(folder, ignore_errors=True)
