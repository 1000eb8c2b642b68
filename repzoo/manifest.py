"""A typed, read-only view of the weights manifest (``repzoo/weights_manifest.json``).

The manifest is data: every released checkpoint of every model (names of families not
built yet included) and the RepOptimizer scale files. The registry reads the tags, the
weights layer the records, the hub layer the scale files, the CLI all of it::

    from repzoo.manifest import load_manifest
    rec = load_manifest().weights("RepVGG-A0")          # the default (first) tag
    rec.files[0].file_name, rec.top1, rec.eval.crop_pct

The file is read once per process (:func:`load_manifest` is cached). Its layout is
documented by ``docs/weights_manifest.schema.json``.
"""
from __future__ import annotations

import functools
import json
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from .errors import RepZooError

if TYPE_CHECKING:  # pragma: no cover
    from .hub import Source

__all__ = [
    "MANIFEST_PATH",
    "ManualLink",
    "EvalConfig",
    "FileRecord",
    "WeightsRecord",
    "ModelRecord",
    "Manifest",
    "load_manifest",
]

#: The packaged copy of the repository-root ``weights_manifest.json``.
MANIFEST_PATH = pathlib.Path(__file__).with_name("weights_manifest.json")


@dataclass(frozen=True)
class ManualLink:
    """Where a person can download a file by hand (a Drive folder, a Baidu share and its code)."""

    site: str
    url: str
    access_code: Optional[str] = None

    def __str__(self) -> str:
        code = f" (access code {self.access_code})" if self.access_code else ""
        return f"{self.site}: {self.url}{code}"


@dataclass(frozen=True)
class EvalConfig:
    """The authors' evaluation transform, in timm's ``pretrained_cfg`` terms."""

    input_size: Tuple[int, int, int]
    crop_pct: float
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    source: Optional[str] = None

    def as_pretrained_cfg(self) -> Dict[str, Any]:
        return dict(input_size=self.input_size, crop_pct=self.crop_pct, interpolation=self.interpolation,
                    mean=self.mean, std=self.std)


@dataclass(frozen=True)
class FileRecord:
    """One file: its name in the cache / mirror, what is known of it, and where it comes from.

    ``form`` and ``key_style`` are None for scale files.
    """

    file_name: str
    size: Optional[int]
    sha256: Optional[str]
    sources: Tuple["Source", ...]
    form: Optional[str] = None
    key_style: Optional[str] = None
    manual: Tuple[ManualLink, ...] = ()
    note: Optional[str] = None

    def hint(self) -> Optional[str]:
        """Text for humans on getting the file by hand (for error messages), beyond the sources' own links."""
        known = {src.manual_link() for src in self.sources}
        lines = [f"  {link}" for link in self.manual if link.url not in known]
        if not lines:
            return f"Save it as {self.file_name}."
        return "Also by hand from:\n" + "\n".join(lines) + f"\nand save it as {self.file_name}."


@dataclass(frozen=True)
class WeightsRecord:
    """One pretrained tag of one model: the files holding the weights (tried in order) and their metadata."""

    name: str
    tag: str
    files: Tuple[FileRecord, ...]
    top1: Optional[float]
    eval: EvalConfig
    license: Optional[str]
    paper: str
    family: str
    dataset: Optional[str] = None
    note: Optional[str] = None

    def pretrained_cfg(self) -> Dict[str, Any]:
        """What ``model.pretrained_cfg`` gets after these weights are loaded."""
        return dict(self.eval.as_pretrained_cfg(), tag=self.tag, top1=self.top1, license=self.license,
                    paper=self.paper)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    family: str
    paper: str
    license: Optional[str]
    code: Optional[str]
    weights: Tuple[WeightsRecord, ...] = field(repr=False)


def _norm(name: str) -> str:
    from .registry import normalize_name

    return normalize_name(name)


def _parse_file(d: Mapping[str, Any], source_cls) -> FileRecord:
    return FileRecord(
        file_name=d["file_name"],
        size=d.get("size"),
        sha256=d.get("sha256"),
        sources=tuple(source_cls(s["kind"], s["location"], s.get("filename"), s.get("revision"))
                      for s in d.get("sources", ())),
        form=d.get("form"),
        key_style=d.get("key_style"),
        manual=tuple(ManualLink(m["site"], m["url"], m.get("access_code")) for m in d.get("manual", ())),
        note=d.get("note"),
    )


class Manifest:
    """Models → tags → files, and RepOpt scale files. Lookups accept any spelling of a name."""

    def __init__(self, data: Mapping[str, Any]):
        from .hub import Source

        self.version = data.get("manifest_version")
        self._models: Dict[str, ModelRecord] = {}
        self._lookup: Dict[str, str] = {}
        for name, m in data.get("models", {}).items():
            tags = tuple(
                WeightsRecord(
                    name=name,
                    tag=t["tag"],
                    files=tuple(_parse_file(f, Source) for f in t["files"]),
                    top1=t.get("top1"),
                    eval=EvalConfig(tuple(t["eval"]["input_size"]), float(t["eval"]["crop_pct"]),
                                    t["eval"]["interpolation"], tuple(t["eval"]["mean"]), tuple(t["eval"]["std"]),
                                    t["eval"].get("source")),
                    license=m.get("license"),
                    paper=m["paper"],
                    family=m["family"],
                    dataset=t.get("dataset"),
                    note=t.get("note"),
                )
                for t in m["weights"]
            )
            self._models[name] = ModelRecord(name, m["family"], m["paper"], m.get("license"), m.get("code"), tags)
            self._lookup[_norm(name)] = name
        self._scales: Dict[str, FileRecord] = {
            name: _parse_file(d, Source) for name, d in data.get("scales", {}).items()
        }
        self._scale_lookup = {_norm(name): name for name in self._scales}

    @classmethod
    def from_file(cls, path: "pathlib.Path | str") -> "Manifest":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    # ------------------------------------------------------------------ lookups
    def names(self) -> List[str]:
        """Every model name in the manifest (registered or not yet built)."""
        return list(self._models)

    def scale_names(self) -> List[str]:
        return list(self._scales)

    def model(self, name: str) -> ModelRecord:
        canonical = self._lookup.get(_norm(name))
        if canonical is None:
            raise RepZooError(
                f"No released weights are known for {name!r}. Models with weights: "
                f"{', '.join(self._models)}. Use checkpoint_path=... for your own file."
            )
        return self._models[canonical]

    def tags(self, name: str) -> List[str]:
        """The pretrained tags of ``name`` in order (the first is the default); [] if none."""
        canonical = self._lookup.get(_norm(name))
        return [w.tag for w in self._models[canonical].weights] if canonical else []

    def weights(self, name: str, tag: Optional[str] = None) -> WeightsRecord:
        """The record of ``name``'s weights under ``tag`` (default: the first tag)."""
        model = self.model(name)
        if tag is None:
            return model.weights[0]
        for rec in model.weights:
            if rec.tag == tag:
                return rec
        raise RepZooError(
            f"{model.name} has no pretrained tag {tag!r}; its tags are: "
            f"{', '.join(w.tag for w in model.weights)}."
        )

    def scales(self, name: str) -> FileRecord:
        """The RepOptimizer scale file of RepOpt model ``name``."""
        canonical = self._scale_lookup.get(_norm(name))
        if canonical is None:
            raise RepZooError(
                f"No released RepOptimizer scales for {name!r}; scale files exist for: "
                f"{', '.join(self._scales)}. Run Hyper-Search to make your own."
            )
        return self._scales[canonical]

    def files(self) -> List[Tuple[str, Optional[str], FileRecord]]:
        """Every file in the manifest as ``(model name, tag or None for scales, record)``."""
        out = [(m.name, w.tag, f) for m in self._models.values() for w in m.weights for f in w.files]
        out += [(name, None, f) for name, f in self._scales.items()]
        return out


@functools.lru_cache(maxsize=1)
def load_manifest() -> Manifest:
    """The packaged manifest, parsed once per process."""
    try:
        return Manifest.from_file(MANIFEST_PATH)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RepZooError(
            f"The packaged weights manifest {MANIFEST_PATH} is missing or invalid ({type(err).__name__}: {err}). "
            "Reinstall repzoo."
        ) from err
