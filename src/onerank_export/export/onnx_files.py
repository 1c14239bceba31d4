"""Reading and writing the product's ONNX files past ONNX's 2 GiB protobuf limit, in one place.

A model whose tensors weigh more than the external-data threshold is saved in ONNX's own external-data
format: `<model>.onnx` holds the graph, `<model>.onnx.data` beside it every tensor of at least 1 KiB
(ONNX's default), in graph order, so the same model saves to the same bytes. ONNX Runtime, Triton's
ONNX Runtime backend and TensorRT's ONNX parser resolve the data file relative to the model file.
Below the threshold a model is one file, as before.

Past 2 GiB nothing may serialize the whole model: onnx.checker and shape inference run on the path
(`validate_file`), ONNX Runtime sessions open a file (`session_from_proto` writes one when it must).
Torch-free: the Triton python model opens its sessions through here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

# Models with more tensor bytes than this are saved with external data. 256 MiB, the split threshold:
# well under the 2 GiB protobuf limit, and past it the export streams the tables to the data file and
# the CPU rewrite copies them file to file, instead of holding them in a proto (a 3M-row build's peak
# falls from 5.0 to about 2 GB: docs/embeddings.md#memory).
EXTERNAL_DATA_BYTES = 256 << 20
EXTERNAL_DATA_ENV = "ONERANK_EXTERNAL_DATA_BYTES"  # tests lower it to force external data on tiny models
TENSOR_THRESHOLD = 1024  # bytes: smaller tensors stay in the model file (ONNX's size_threshold default)
DATA_SUFFIX = ".data"


def external_data_threshold(threshold: int | None = None) -> int:
    """The threshold in force: the argument, else $ONERANK_EXTERNAL_DATA_BYTES, else EXTERNAL_DATA_BYTES."""
    if threshold is not None:
        return threshold
    raw = os.environ.get(EXTERNAL_DATA_ENV, "").strip()
    if not raw:
        return EXTERNAL_DATA_BYTES
    try:
        return int(raw)
    except ValueError:
        from onerank_export.errors import ConfigError

        raise ConfigError(f"${EXTERNAL_DATA_ENV}={raw!r} is not a number of bytes; unset it or give an integer") \
            from None


def data_file_name(path: str | Path) -> str:
    """`onerank.fp32.onnx` -> `onerank.fp32.onnx.data`: the external data file beside it."""
    return Path(path).name + DATA_SUFFIX


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's tensor data, from dims and types (nothing is copied or serialized)."""
    total = 0
    for tensor in graph_tensors(model.graph):
        count = 1
        for dim in tensor.dims:
            count *= dim
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except KeyError:  # strings and other non-numeric types: small here
            itemsize = 1
        total += count * itemsize
    return total


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph_tensors(model.graph))


def save_onnx(model: onnx.ModelProto, path: str | Path, *, threshold: int | None = None,
              validate: bool = False, infer_shapes: bool = True, staging: Path | None = None) -> Path:
    """Write `model` to `path` atomically: one file, or past the threshold `path` + `path`.data.

    With external data the big tensors' bytes leave the proto as they are written (they are not held
    twice); the caller must not use `model` afterwards. `validate`: onnx.checker (full) and, with
    `infer_shapes`, strict shape inference on the written file (the path form, which works past 2 GiB),
    the inferred shapes kept in it. `staging`: a `staging_dir(path)` the caller already wrote tensors
    into (`<path>.data`, referenced by the model as external): the rest is appended after them."""
    path = Path(path)
    external = tensor_bytes(model) > external_data_threshold(threshold)
    with contextlib.nullcontext(staging) if staging is not None else staging_dir(path) as tmp:
        staged = tmp / path.name
        if external:
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_file_name(path), size_threshold=TENSOR_THRESHOLD)
        else:
            onnx.save_model(model, str(staged))
        if validate:
            validate_file(staged, infer_shapes=infer_shapes)
        _publish(tmp, path, external)
    return path


def validate_file(path: str | Path, *, infer_shapes: bool = True) -> None:
    """onnx.checker (full) and strict shape inference on a model file, whatever its size; the inferred
    value_info is written back. Raises onnx's ValidationError / InferenceError."""
    onnx.checker.check_model(str(path), full_check=True)
    if infer_shapes:
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)


def data_files(path: str | Path) -> list[Path]:
    """The external data files a model file references (none for a single-file model), sorted."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    names = {e.value for t in graph_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return sorted(path.parent / n for n in names)


def copy_model(source: str | Path, target: str | Path) -> dict[str, Path]:
    """Copy a model file and its data file(s) to `target` (another name is fine: the data keeps the name
    the model references). Hard links where the filesystem allows: the build's models are read-only
    artifacts written once, up to gigabytes each, and a link costs no second copy of the item table
    on disk (a copy of the directory elsewhere still copies the bytes). Returns {file name: path}."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    out = {target.name: _link_or_copy(source, target)}
    try:
        referenced = data_files(source)
    except Exception:  # not readable as ONNX (DecodeError and others): copied as it is, the backend rules say so
        referenced = []
    for data in referenced:
        out[data.name] = _link_or_copy(data, target.parent / data.name)
    return out


def _link_or_copy(source: Path, dest: Path) -> Path:
    if dest.exists():
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, dest)
    return dest


def load_without_tables(path: str | Path) -> onnx.ModelProto:
    """A model file with every tensor loaded except its embedding tables (initializers read only as a
    Gather's data), which stay references into the data file: for rewrites that never touch a table.
    Save it with `carry_tables`, or open a session with `session_from_proto(..., tables_from=)`."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    tables = gather_tables(model)
    for tensor in graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in tables:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(path.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def gather_tables(model: onnx.ModelProto) -> set[str]:
    """Initializers read only as the data input of Gather nodes: the embedding tables."""
    readers: dict[str, set[tuple[str, int]]] = {}
    names = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                readers.setdefault(name, set()).add((node.op_type, index))
    return {name for name, used in readers.items() if used == {("Gather", 0)}}


def carry_tables(model: onnx.ModelProto, source_dir: str | Path, data_path: Path) -> None:
    """Copy the bytes of every tensor still external (from `load_without_tables`) into `data_path` (a
    staging directory's `<target>.data`, before `save_onnx(staging=)` appends the rest) in 1 MiB
    chunks, and point the tensor there: a file copy, never the table in memory."""
    offset = data_path.stat().st_size if data_path.exists() else 0
    with open(data_path, "ab") as out:
        for tensor in graph_tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in tensor.external_data}
            start, length = int(info.get("offset", 0)), int(info["length"])
            with open(Path(source_dir) / info["location"], "rb") as src:
                src.seek(start)
                left = length
                while left:
                    chunk = src.read(min(left, 1 << 20))
                    if not chunk:
                        raise OSError(f"{info['location']}: ends before tensor '{tensor.name}' does")
                    out.write(chunk)
                    left -= len(chunk)
            _point(tensor, data_path.name, offset, length)
            offset += length


def _point(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def session_from_proto(model: onnx.ModelProto, options, providers: list[str], *, keep: bool = True,
                       tables_from: Path | None = None):
    """An ONNX Runtime session of an in-memory model: from its bytes when it is small, else from a
    temporary external-data file (past 2 GiB it cannot be serialized). With `keep` the model is left as
    it was; without, its big tensors are emptied as they are written (for a caller that drops it: the
    table is not held by the proto and by ONNX Runtime at once). `tables_from`: the directory of the
    data file the model's still-external tensors reference (`load_without_tables`); it is linked into
    the temporary directory, not copied."""
    import onnxruntime as ort

    if tensor_bytes(model) <= external_data_threshold() and not uses_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    with tempfile.TemporaryDirectory(prefix="onerank-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        if tables_from is not None:
            for name in {e.value for t in graph_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
                         for e in t.external_data if e.key == "location"}:
                _link_or_copy(Path(tables_from) / name, Path(tmp) / name)
        onnx.save_model(model, str(path), save_as_external_data=True, location=data_file_name(path),
                        size_threshold=TENSOR_THRESHOLD)
        try:
            return ort.InferenceSession(str(path), options, providers=providers)
        finally:  # give the caller its model back (the save moved the bytes to the file)
            if keep:
                onnx.external_data_helper.load_external_data_for_model(model, tmp)


@contextlib.contextmanager
def staging_dir(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside `path`: the data file is written under its final name, so both
    files are staged and renamed into place only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, path: Path, external: bool) -> None:
    from onerank_export.io import current_umask

    data = path.parent / data_file_name(path)
    mode = 0o666 & ~current_umask()  # mkdtemp's files are the process's; give them a plain file's mode
    if external:
        os.chmod(tmp / data.name, mode)
        os.replace(tmp / data.name, data)  # the data first: a model file never references a missing one
    elif data.exists():
        data.unlink()  # left by an earlier, bigger save of the same model
    os.chmod(tmp / path.name, mode)
    os.replace(tmp / path.name, path)


def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from graph_tensors(sub)
