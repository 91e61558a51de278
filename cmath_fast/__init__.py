"""cmath-fast: CMATH (arXiv 2411.10060) for multimodal emotion recognition in conversation,
with a pure-PyTorch reference and fused Triton kernels for its hot spots."""

from .config import CMATHConfig
from .graphs import GraphedPredictor, GraphedTrainer
from .model import CMATH, CMATHOutput

__version__ = "0.1.0"
__all__ = ["CMATH", "CMATHConfig", "CMATHOutput", "GraphedTrainer", "GraphedPredictor", "__version__"]
