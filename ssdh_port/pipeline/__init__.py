"""The experiment pipeline: prepare -> train -> encode -> evaluate -> report.

    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), "runs/x", sources={...}, bits=48, max_iter=5000)
    trained = train_caffe(recipe.solver)                        # -> TrainResult
    query = encode_split(recipe.deploy, trained.weights, "runs/mnist/test_lmdb", ...)  # -> EncodedSplit
    report = retrieval_report(query.index.codes, db.index.codes, ..., method="SSDH-48")  # -> RetrievalReport
    write_table([report, ...], "results/x", title="...")

Each step is a function that takes paths or objects and returns a typed result;
the runner (ssdh_port.runner) composes them for a spec, the commands are thin
layers over them. The plain-PyTorch models train through pipeline.trainer.fit.
The names below load their module on first use (importing the package loads
nothing of the training stack).
"""
import importlib

_EXPORTS = {
    "EncodedSplit": "encode", "codes_from_activations": "encode", "encode_batches": "encode",
    "encode_split": "encode",
    "Evaluation": "evaluate", "RetrievalReport": "evaluate", "dnnh_metric": "evaluate",
    "evaluate_code_files": "evaluate", "retrieval_report": "evaluate", "sampled_curve": "evaluate",
    "batch_source": "features", "extract": "features", "load_net": "features",
    "PreparedRecipe": "recipe", "prepare_recipe": "recipe", "recipe_dir": "recipe", "set_solver_fields": "recipe",
    "solver_overrides": "recipe",
    "read_table": "report", "write_readme": "report", "write_table": "report",
    "TrainConfig": "trainer", "fit": "trainer",
    "TrainResult": "train", "final_test": "train", "read_log": "train", "train_caffe": "train",
}
# Names that live outside the pipeline, kept here for the steps' users.
_ELSEWHERE = {"find_latent_blob": "ssdh_port.caffe.net", "transform_param": "ssdh_port.data.transformer",
              "resolve_device": "ssdh_port.device"}
__all__ = sorted(_EXPORTS) + sorted(_ELSEWHERE)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ssdh_port.pipeline.{_EXPORTS[name]}"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'ssdh_port.pipeline' has no attribute {name!r}")
