"""Features from one's own conversations: a manifest of utterances (``manifest``) through text,
audio and visual extractors (``extractors``) into the native feature file that ``train`` and
``predict`` read (``extract``). Needs the optional extra: ``pip install 'cmath-fast[features]'``."""

from .manifest import Manifest, ManifestError, Utterance, read_manifest

__all__ = ["Manifest", "ManifestError", "Utterance", "read_manifest"]
