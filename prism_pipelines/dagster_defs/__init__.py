"""The thin Dagster layer: partitions, assets, jobs, schedules, sensors and checks built from the
integrations file, each a few lines over ``prism_pipelines.sync``."""
