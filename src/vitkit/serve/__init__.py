"""`vitkit serve RUN|WEIGHTS`: a trained model behind a JSON API and a web page.

`engine.py` is the model (decode, batched probabilities, attention maps), `batcher.py` gathers
concurrent requests into batches, `app.py` is the FastAPI app and the uvicorn server, `page.py`
the page. FastAPI, uvicorn and python-multipart come with the `serve` extra; this module imports
them only when a server is asked for, so `import vitkit` never needs them.
"""

from __future__ import annotations

from vitkit.extras import require


def require_serve_extra() -> None:
    """A missing web library is the CLI's one-line error naming the extra, not an ImportError."""
    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "serve", "vitkit serve")
