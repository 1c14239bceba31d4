"""Collect the TensorRT Python names a module uses, from its source (used by
tests/engine/tensorrt/test_tensorrt_api_names.py).

What the AST collection covers, in the modules given to `audit_sources`:
- every attribute read or written on an expression that derives from the `tensorrt` module:
  the name `trt` (imported as `import tensorrt as trt`, or a parameter named `trt`), the result of
  any attribute, call or subscript of such an expression, names assigned from one (also through
  tuple unpacking, loops, `with`, and `self.<attr>` across a class's methods), parameters
  annotated `trt.<Type>`, and calls of audited functions that return such an expression;
- keyword argument names of calls on TensorRT callables (pybind11 keeps them as literals);
- method names of classes that subclass a TensorRT class (TensorRT calls them by name);
- `trt.<Type>` names in annotations;
- `getattr(x, "NAME", default)` / `hasattr(x, "NAME")` on a TensorRT expression: a *guarded* name,
  which may exist in only one release.
Flows the collection cannot follow are reported as problems and fail the test: a TensorRT value
passed to a parameter that is not annotated `trt.<Type>` (or named `trt`), or to any function
outside the audited modules other than plain conversions (int, str, bytes, memoryview, ...), or a
dynamic getattr/setattr on one. Instances of our own subclasses of TensorRT classes are ours:
their attributes are not TensorRT names.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

CONVERSIONS = {"int", "str", "bool", "float", "bytes", "memoryview", "tuple", "list", "len", "sorted", "range",
               "print", "repr", "sum", "any", "all", "min", "max", "enumerate", "zip", "set", "dict", "isinstance"}
OBJECT_NAMES = set(dir(object))


@dataclass(frozen=True)
class NameUse:
    name: str
    where: str
    guarded: bool


@dataclass
class Audit:
    uses: list[NameUse] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def names(self, guarded: bool) -> set[str]:
        return {u.name for u in self.uses if u.guarded is guarded}


def _is_trt_annotation(node: ast.expr | None) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "trt" and node is not None


class Scope:
    """One top-level function or method (with everything nested in it): flow-insensitive taint."""

    def __init__(self, audit: TensorRTNameAudit, label: str, func: ast.FunctionDef, cls: str | None) -> None:
        self.audit, self.label, self.func, self.cls = audit, label, func, cls
        self.self_name = func.args.args[0].arg if cls and func.args.args else None
        self.tainted = {"trt"}

    def tainted_expr(self, node: ast.AST | None) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.tainted
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == self.self_name:
                return node.attr in self.audit.self_attrs.setdefault(self.cls, set())
            return self.tainted_expr(node.value)
        if isinstance(node, ast.Subscript):
            return self.tainted_expr(node.value)
        if isinstance(node, (ast.Tuple, ast.List)):
            return any(self.tainted_expr(e) for e in node.elts)
        if isinstance(node, ast.IfExp):
            return self.tainted_expr(node.body) or self.tainted_expr(node.orelse)
        if isinstance(node, ast.BoolOp):
            return any(self.tainted_expr(v) for v in node.values)
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "getattr" and node.args:
                return self.tainted_expr(node.args[0])
            if isinstance(f, ast.Name) and f.id in self.audit.functions:
                return f.id in self.audit.returns_trt
            return self.tainted_expr(f)
        return False

    def bind(self, target: ast.AST, value: ast.AST | None, tainted: bool | None = None) -> bool:
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts):
                return any([self.bind(t, v) for t, v in zip(target.elts, value.elts, strict=True)])
            return any([self.bind(t, None, self.tainted_expr(value) if tainted is None else tainted)
                        for t in target.elts])
        if not (self.tainted_expr(value) if tainted is None else tainted):
            return False
        if isinstance(target, ast.Name) and target.id not in self.tainted:
            self.tainted.add(target.id)
            return True
        if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                and target.value.id == self.self_name):
            attrs = self.audit.self_attrs.setdefault(self.cls, set())
            if target.attr not in attrs:
                attrs.add(target.attr)
                return True
        return False

    def propagate(self) -> bool:
        changed = False
        for node in ast.walk(self.func):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                    if (arg.arg == "trt" or _is_trt_annotation(arg.annotation)) and arg.arg not in self.tainted:
                        self.tainted.add(arg.arg)
                        changed = True
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "tensorrt":
                        self.tainted.add(alias.asname or alias.name)
            elif isinstance(node, ast.Assign):
                changed |= any([self.bind(t, node.value) for t in node.targets])
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                changed |= self.bind(node.target, node.value)
            elif isinstance(node, (ast.For, ast.comprehension)):
                changed |= self.bind(node.target, None, self.tainted_expr(node.iter))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                changed |= self.bind(node.optional_vars, node.context_expr)
            elif (isinstance(node, ast.Return) and self.tainted_expr(node.value)
                  and self.func.name not in self.audit.returns_trt):
                self.audit.returns_trt.add(self.func.name)
                changed = True
        return changed

    def collect(self) -> None:
        for node in ast.walk(self.func):
            where = f"{self.label}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and self.tainted_expr(node.value) and not (
                    isinstance(node.value, ast.Name) and node.value.id == self.self_name):
                self.audit.use(node.attr, where, guarded=False)
            elif isinstance(node, ast.Call):
                self._collect_call(node, where)
            elif isinstance(node, ast.ClassDef) and any(self.tainted_expr(b) for b in node.bases):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        self.audit.use(item.name, where, guarded=False)
            elif isinstance(node, ast.FunctionDef):
                for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                    self._collect_annotation(arg.annotation, where)
                self._collect_annotation(node.returns, where)

    def _collect_annotation(self, node: ast.expr | None, where: str) -> None:
        if _is_trt_annotation(node):
            while isinstance(node, ast.Attribute):
                self.audit.use(node.attr, where, guarded=False)
                node = node.value

    def _collect_call(self, node: ast.Call, where: str) -> None:
        f, args = node.func, node.args
        name = f.id if isinstance(f, ast.Name) else None
        if name in ("getattr", "hasattr", "setattr", "delattr") and args and self.tainted_expr(args[0]):
            if name in ("setattr", "delattr") or len(args) < 2 or not isinstance(args[1], ast.Constant):
                self.audit.result.problems.append(f"{where}: dynamic {name} on a TensorRT object")
            else:
                self.audit.use(args[1].value, where, guarded=name == "hasattr" or len(args) == 3)
            return
        if self.tainted_expr(f):
            for kw in node.keywords:
                if kw.arg is None:
                    self.audit.result.problems.append(f"{where}: **kwargs into a TensorRT call")
                else:
                    self.audit.use(kw.arg, where, guarded=False)
            return
        callee = self.audit.functions.get(name) if name else None
        if (callee is None and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                and f.value.id == self.self_name):
            callee = self.audit.methods.get((self.cls, f.attr))
        passed = [(a, None) for a in args] + [(kw.value, kw.arg) for kw in node.keywords]
        for position, (value, keyword) in enumerate(passed):
            if not self.tainted_expr(value) or isinstance(value, ast.Starred):
                continue
            if callee is None:
                if name not in CONVERSIONS:
                    self.audit.result.problems.append(f"{where}: a TensorRT value flows into {ast.unparse(f)}(), "
                                               "outside the audited functions")
                continue
            params = [*callee.args.posonlyargs, *callee.args.args, *callee.args.kwonlyargs]
            if isinstance(f, ast.Attribute):
                params = params[1:]  # self
            param = next((p for p in params if p.arg == keyword), None) if keyword else (
                params[position] if position < len(params) else None)
            if param is None or not (param.arg == "trt" or _is_trt_annotation(param.annotation)):
                self.audit.result.problems.append(f"{where}: a TensorRT value is passed to {callee.name}() through a "
                                           "parameter not annotated trt.<Type>")


class TensorRTNameAudit:
    def __init__(self, sources: dict[str, str]) -> None:
        self.functions: dict[str, ast.FunctionDef] = {}
        self.methods: dict[tuple[str, str], ast.FunctionDef] = {}
        self.returns_trt: set[str] = set()
        self.self_attrs: dict[str | None, set[str]] = {}
        self.result = Audit()
        self.scopes: list[Scope] = []
        for label, source in sources.items():
            for node in ast.parse(source).body:
                if isinstance(node, ast.FunctionDef):
                    assert node.name not in self.functions, f"{label}: {node.name} defined twice in audited code"
                    self.functions[node.name] = node
                    self.scopes.append(Scope(self, label, node, None))
                elif isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            self.methods[(node.name, item.name)] = item
                            self.scopes.append(Scope(self, label, item, node.name))
                elif not isinstance(node, ast.If) and any(
                        isinstance(n, ast.Name) and n.id == "trt" for n in ast.walk(node)):
                    self.result.problems.append(f"{label}:{node.lineno}: module-level TensorRT use")

    def use(self, name: str, where: str, guarded: bool) -> None:
        if name not in OBJECT_NAMES:
            self.result.uses.append(NameUse(name, where, guarded))

    def run(self) -> Audit:
        while any([scope.propagate() for scope in self.scopes]):
            pass
        for scope in self.scopes:
            scope.collect()
        return self.result


def audit_sources(sources: dict[str, str]) -> Audit:
    return TensorRTNameAudit(sources).run()
