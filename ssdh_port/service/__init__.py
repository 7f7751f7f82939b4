"""The retrieval service, apart from training: image -> code -> nearest codes.

    from ssdh_port.service import ImageSearch, create_app
    engine = ImageSearch("runs/demo/train.ssdh")   # the net comes from the model card beside it
    hits = engine.search([image], k=10)            # or: app = create_app(engine), served by uvicorn

- search.py       ImageSearch: a deploy net encodes images; an index answers
- server.py       the FastAPI app, its limits and micro-batched model pool; serve()
- page.py         the search page (one self-contained HTML document)
- model_card.py   what made a code file's codes (net, weights, preprocessing)

Importing this package loads none of the training stack (solver, trainers,
pipeline); a test holds it to that. Names load their module on first use.
"""
import importlib

_EXPORTS = {
    "ImageSearch": "search", "ImageInputError": "search", "open_index": "search", "read_images": "search",
    "ServiceLimits": "server", "create_app": "server", "serve": "server",
    "ModelCard": "model_card", "read_card": "model_card", "make_card": "model_card", "write_card": "model_card",
    "page": "page",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ssdh_port.service.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ssdh_port.service' has no attribute {name!r}")
