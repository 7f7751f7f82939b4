"""An experiment as data: a typed spec, read from TOML, run by ssdh_port.runner.

    [data]      which dataset of the registry (ssdh_port.datasets_registry), where its files go
    [model]     a Caffe recipe (kind = "caffe": recipe, bits, p, loss weights, solver fields,
                initial weights) or a torch model of the registry (kind = "torch": arch and
                its training recipe's options)
    [encoding]  the latent blob, the blobs kept beside the codes, the classifier's scores
    [protocol]  top-k, radius, relevance, and extra metrics (curves, dnnh_map, ...)
    [[variants]] sweeps and ablations as data: a name and the fields it sets

A field is addressed by its dotted name (`model.bits`, `model.solver.max_iter`):
`--set model.bits=32` on the command line, `set = {"model.bits" = 32}` in a
variant. Unknown sections or fields are errors that name the file and the field.
"""
import copy
import dataclasses
import json
import os
import tomllib

from ssdh_port.errors import SSDHError


class SpecError(SSDHError):
    """A spec that cannot be read or set; the message names the file and the field."""


@dataclasses.dataclass
class DataSpec:
    dataset: str = "mnist"             # a name of the dataset registry
    dir: str = "runs/mnist"            # where the prepared databases go
    archive: str | None = None         # the source archive, for datasets made from one
    dont_care: float = 0.0             # mnist-mosaics: the share of training labels made "don't care"


@dataclasses.dataclass
class ModelSpec:
    kind: str = "caffe"                # "caffe" (a recipe folder) or "torch" (a registry model)
    recipe: str = "lenet_ssdh"         # caffe: a shipped recipe name or a folder
    arch: str = ""                     # torch: fastnet | resnet18
    bits: int = 48
    p: int = 2
    loss_weights: list | None = None   # [alpha, beta, gamma] (default: the recipe's own)
    weights: str | None = None         # caffe: initial weights (fine-tuning)
    weights_name: str | None = None    # caffe: snapshot name, {bits} filled in (default: the recipe's)
    solver_file: str = "solver.yaml"   # caffe, DNNH nets: the recipe's solver file (solver_cpu.yaml, ...)
    solver: dict = dataclasses.field(default_factory=dict)   # caffe: SolverParameter fields
    precision: str = "fp32"            # caffe: "fp32" (Caffe's numbers) or "bf16" (autocast, training and encoding)
    train: dict = dataclasses.field(default_factory=dict)    # torch: the trainer's recipe options


@dataclasses.dataclass
class EncodingSpec:
    latent_blob: str | None = None     # default: found by name (ssdh_port.caffe.net.find_latent_blob)
    features: list = dataclasses.field(default_factory=list)   # blobs kept beside the codes
    scores_blob: str | None = None     # the classifier's scores: accuracy on the queries
    batch_size: int = 500


@dataclasses.dataclass
class ProtocolSpec:
    topk: int = 1000
    radius: int = 2
    relevance: list = dataclasses.field(default_factory=lambda: ["any"])   # "any" / "exact" (multi-label)
    metrics: list = dataclasses.field(default_factory=list)  # extra: curves, picture, dnnh_map, label_accuracy,
    #                                                          coarse_to_fine, baselines
    options: dict = dataclasses.field(default_factory=dict)  # of the extra metrics (shortlist, dnnh_top, ...)


@dataclasses.dataclass
class Variant:
    name: str
    set: dict = dataclasses.field(default_factory=dict)
    method: str | None = None          # the row's name (default: the spec's method)
    extra: dict = dataclasses.field(default_factory=dict)   # known values shown beside its rows (paper, ...)


@dataclasses.dataclass
class Spec:
    name: str = "experiment"
    title: str = ""
    method: str = "{arch}-SSDH-{bits}"  # a row's name; {bits}, {p}, {arch}, {variant}, {loss_weights}
    notes: str = ""
    columns: list = dataclasses.field(default_factory=list)  # extra table columns: [header, extra key, format]
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    encoding: EncodingSpec = dataclasses.field(default_factory=EncodingSpec)
    protocol: ProtocolSpec = dataclasses.field(default_factory=ProtocolSpec)
    variants: list = dataclasses.field(default_factory=list)
    source: str | None = None          # the file it was read from

    def to_dict(self):
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def with_fields(self, fields, where="--set"):
        """A copy with dotted fields set ({"model.bits": 32}). A field set here also wins
        over a variant's own setting of it (the command line is the last word), and the
        variants are rewritten so, so that the spec written beside a run reproduces it."""
        spec = copy.deepcopy(self)
        for name, value in fields.items():
            _set_field(spec, name, value, f"{where} {name}")
            for variant in spec.variants:
                _override_variant(variant, name, value)
        return spec

    def expanded(self):
        """[(variant name or None, spec of that variant)]: one per variant, or the spec itself."""
        if not self.variants:
            return [(None, self)]
        out = []
        for variant in self.variants:
            spec = self.with_fields(variant.set, where=f"{self.source or self.name}: variant {variant.name!r}:")
            spec.variants = []
            out.append((variant, spec))
        return out


SECTIONS = {"data": DataSpec, "model": ModelSpec, "encoding": EncodingSpec, "protocol": ProtocolSpec}


def _check_type(value, field, where):
    """value, if it is of the field's type (an int where a float is expected becomes
    a float; a bool is never a number); else an error naming where and the type."""
    kinds = getattr(field.type, "__args__", (field.type,))
    allowed = {int: (int,), float: (int, float), str: (str,), bool: (bool,), list: (list,), dict: (dict,),
               type(None): (type(None),)}
    ok = any(isinstance(value, allowed.get(kind, ())) and not (isinstance(value, bool) and kind in (int, float))
             for kind in kinds)
    if not ok:
        names = " or ".join(kind.__name__ if kind is not type(None) else "nothing" for kind in kinds)
        raise SpecError(f"{where}: expected {names}, got {value!r}")
    return float(value) if float in kinds and isinstance(value, int) and not isinstance(value, bool) else value


def _section(cls, table, where):
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table of fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown} (fields: {sorted(fields)})")
    return cls(**{name: _check_type(value, fields[name], f"{where}.{name}") for name, value in table.items()})


def from_dict(payload, source="<spec>"):
    """A Spec from a parsed TOML / JSON document."""
    top = {f.name: f for f in dataclasses.fields(Spec)}
    unknown = sorted(set(payload) - set(top) - {"source"})
    if unknown:
        raise SpecError(f"{source}: unknown section(s) or field(s) {unknown} (known: "
                        f"{sorted(set(top) - {'source'})})")
    fields = {"source": source}
    for name, value in payload.items():
        if name in SECTIONS:
            fields[name] = _section(SECTIONS[name], value, f"{source}: [{name}]")
        elif name == "variants":
            if not isinstance(value, list):
                raise SpecError(f"{source}: variants: expected an array of tables ([[variants]])")
            fields[name] = [_section(Variant, v, f"{source}: variants[{i}]") for i, v in enumerate(value)]
            names = [v.name for v in fields[name]]
            if len(set(names)) != len(names):
                raise SpecError(f"{source}: variant names repeat: {names}")
        elif name != "source":
            fields[name] = _check_type(value, top[name], f"{source}: {name}")
    spec = Spec(**fields)
    for i, column in enumerate(spec.columns):
        if not (isinstance(column, list) and len(column) == 3 and all(isinstance(c, str) for c in column)):
            raise SpecError(f"{source}: columns[{i}]: expected [header, extra key, format], got {column!r}")
    for variant in spec.variants:  # every variant's fields exist and type-check now, not mid-run
        spec.with_fields(variant.set, where=f"{source}: variant {variant.name!r}:")
    return spec


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments")


def shipped():
    """Names of the specs shipped with the package."""
    return sorted(name[:-5] for name in os.listdir(SHIPPED) if name.endswith(".toml"))


def find(name_or_path):
    """A spec file's path: the path itself when it exists, else a shipped spec by name."""
    if os.path.isfile(name_or_path):
        return name_or_path
    path = os.path.join(SHIPPED, os.path.basename(name_or_path).removesuffix(".toml") + ".toml")
    if os.path.sep not in name_or_path and os.path.isfile(path):
        return path
    raise SpecError(f"{name_or_path}: no such spec file, nor a shipped spec (shipped: {', '.join(shipped())})")


def load(path):
    """Read a spec file (.toml, or .json as written beside a run)."""
    try:
        with open(path, "rb") as f:
            payload = json.load(f) if path.endswith(".json") else tomllib.load(f)
    except OSError as err:
        raise SpecError(f"{path}: cannot read the spec ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise SpecError(f"{path}: not a valid spec file ({err})") from None
    return from_dict(payload, source=os.fspath(path))


def parse_value(text):
    """A --set value: TOML's syntax for one value (32, 0.5, true, [1, 0, 0], "x"),
    else the text itself as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items):
    """["model.bits=32", ...] -> {"model.bits": 32, ...}"""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"--set {item!r}: expected FIELD=VALUE, e.g. model.bits=32")
        out[name.strip()] = parse_value(value.strip())
    return out


def _set_field(spec, name, value, where):
    parts = name.split(".")
    if parts[0] in SECTIONS:
        if len(parts) < 2:
            raise SpecError(f"{where}: name a field of [{parts[0]}], e.g. {parts[0]}.{_first(SECTIONS[parts[0]])}")
        section = getattr(spec, parts[0])
        fields = {f.name: f for f in dataclasses.fields(section)}
        if parts[1] not in fields:
            raise SpecError(f"{where}: [{parts[0]}] has no field {parts[1]!r} (fields: {sorted(fields)})")
        if len(parts) == 2:
            setattr(section, parts[1], _check_type(value, fields[parts[1]], where))
            return
        table = getattr(section, parts[1])
        if not isinstance(table, dict):
            raise SpecError(f"{where}: {parts[0]}.{parts[1]} is not a table")
        for key in parts[2:-1]:
            table = table.setdefault(key, {})
        table[parts[-1]] = value
        return
    top = {f.name: f for f in dataclasses.fields(Spec)}
    if len(parts) == 1 and parts[0] in top and parts[0] not in ("variants", "source"):
        setattr(spec, parts[0], _check_type(value, top[parts[0]], where))
        return
    raise SpecError(f"{where}: no such field (sections: {sorted(SECTIONS)}; top-level: name, title, method, notes, columns)")


def _override_variant(variant, name, value):
    """name=value in place of what the variant sets at, inside or below that field."""
    for key in list(variant.set):
        if key == name or key.startswith(name + "."):
            del variant.set[key]
            variant.set[name] = value
        elif name.startswith(key + ".") and isinstance(variant.set[key], dict):
            table = variant.set[key] = copy.deepcopy(variant.set[key])
            parts = name[len(key) + 1:].split(".")
            for part in parts[:-1]:
                table = table.setdefault(part, {})
            table[parts[-1]] = value


def _first(cls):
    return dataclasses.fields(cls)[0].name


def to_toml(spec):
    """The spec as TOML text (written beside a run as the spec that ran)."""
    payload = spec.to_dict()
    lines = []
    for key in ("name", "title", "method", "notes", "columns"):
        lines.append(f"{key} = {_toml_value(payload[key])}")
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for key, value in payload[section].items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    for variant in payload["variants"]:
        lines += ["", "[[variants]]"]
        for key, value in variant.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise SpecError(f"cannot write {value!r} as TOML")
