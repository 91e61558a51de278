from setuptools import find_packages, setup

packages = find_packages(include=["cmath_fast", "cmath_fast.*"]) + ["cmath_fast.kernels"]

setup(
    name="cmath-fast",
    version="0.1.0",
    description=("CMATH (arXiv 2411.10060) for multimodal emotion recognition in conversation, "
                 "with fused Triton kernels"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages,
    # kernels/ is installed as cmath_fast.kernels: a top-level `kernels` package would collide
    # with an unrelated package on PyPI.
    package_dir={"cmath_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy",
        "tqdm",
        "scikit-learn",
        "safetensors",
        "nvtx",
    ],
    extras_require={
        "test": ["pytest", "hypothesis"],
        "bench": ["pytest-benchmark", "matplotlib"],
        "xformers": ["xformers"],
        # features from one's own recordings (cmath-fast features extract): no torchvision or
        # torchaudio, whose wheels pin other torch builds
        "features": ["transformers", "opensmile", "soundfile", "av", "pillow", "scipy"],
    },
    entry_points={"console_scripts": ["cmath-fast=cmath_fast.cli:main"]},
    license="MIT",
)
