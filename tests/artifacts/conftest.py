"""Fixtures for the artifact tests: one store per backend."""

from collections.abc import AsyncIterator

import pytest

from libs.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from tests.s3server import MotoS3Server


@pytest.fixture(params=["local", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ArtifactStore]:
    """Each backend in turn, empty, for the contract suite."""
    if request.param == "local":
        backend: ArtifactStore = LocalArtifactStore(
            str(tmp_path_factory.mktemp("store"))
        )
    else:
        server: MotoS3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        backend = S3ArtifactStore(
            bucket, prefix="ci/artifacts", endpoint_url=server.endpoint_url
        )
    async with backend:
        yield backend
