"""The experiment pipeline: prepare -> train -> encode -> evaluate -> report.

    recipe = prepare_recipe(recipe_dir("lenet_ssdh"), "runs/x", sources={...}, bits=48, max_iter=5000)
    trained = train_caffe(recipe.solver)                        # -> TrainResult
    query = encode_split(recipe.deploy, trained.weights, "runs/mnist/test_lmdb", ...)  # -> EncodedSplit
    report = retrieval_report(query.index.codes, db.index.codes, ..., method="SSDH-48")  # -> RetrievalReport
    write_table([report, ...], "results/x", title="...")

Each step is a function that takes paths or objects and returns a typed result;
the tools and the experiment drivers are thin layers over them.
"""
from ssdh_port.pipeline.encode import (  # noqa: F401
    EncodedSplit,
    codes_from_activations,
    encode_batches,
    encode_split,
)
from ssdh_port.pipeline.evaluate import (  # noqa: F401
    Evaluation,
    RetrievalReport,
    dnnh_metric,
    evaluate_code_files,
    retrieval_report,
    sampled_curve,
)
from ssdh_port.device import resolve_device  # noqa: F401
from ssdh_port.caffe.net import find_latent_blob  # noqa: F401
from ssdh_port.data.transformer import transform_param  # noqa: F401
from ssdh_port.pipeline.features import batch_source, extract, load_net  # noqa: F401
from ssdh_port.pipeline.recipe import (  # noqa: F401
    PreparedRecipe,
    prepare_recipe,
    recipe_dir,
    set_solver_fields,
    solver_overrides,
)
from ssdh_port.pipeline.report import read_table, write_report, write_table  # noqa: F401
from ssdh_port.pipeline.scratch import ScratchConfig, ScratchResult, train_scratch  # noqa: F401
from ssdh_port.pipeline.train import TrainResult, final_test, read_log, train_caffe  # noqa: F401
