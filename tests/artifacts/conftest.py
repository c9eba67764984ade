"""Fixtures for the artifact tests: a moto S3 server and one store per backend."""

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from libs.artifacts import ArtifactStore, LocalArtifactStore, S3ArtifactStore
from tests.s3server import MotoS3Server, fake_aws_environment


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    with fake_aws_environment(), MotoS3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server) -> str:
    name = f"artifacts-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


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
