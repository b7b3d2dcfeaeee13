"""Step 0: name what ``dataset_uri`` holds now, cheaply (never cached), so ingest can be cached.

KFP's cache key is the task's parameter values and input artifact names (KFP 2.17
backend/src/v2/cacheutils/cache.go, GenerateCacheKey): ingest keyed on the URI alone would serve stale data
when new images land under the same URI, so it used to run uncached, and with a fresh
dataset artifact every run, ``train`` (whose key includes that artifact) never hit the
cache either. Keyed on the URI *and* this version, an unchanged dataset + config reuses
ingest's artifact and train's checkpoint; a changed one runs both.
"""


from components.base import component


@component
def dataset_version(dataset_uri: str) -> str:
    """s3: key/size/ETag of every object; folder/archive: path/size/mtime; http(s): ETag or
    Last-Modified (none -> a fresh value: no false cache hit). No data is read."""
    from components.steps import user_errors
    from gourmetgram.data.ingest import source_version

    with user_errors():
        version = source_version(dataset_uri.strip())
    print(f"dataset {dataset_uri}: version {version}", flush=True)
    return version
