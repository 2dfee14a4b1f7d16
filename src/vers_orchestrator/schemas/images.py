"""Wire models of `/api/v1/images`, named as the upstream OpenAPI components."""

from __future__ import annotations

from typing import Annotated

import msgspec


class DockerSource(msgspec.Struct, tag_field="type", tag="docker"):
    """An image in an OCI/Docker registry (`python:3.12`, `registry.example.com/team/app:1`)."""

    image_ref: str


class S3Source(msgspec.Struct, tag_field="type", tag="s3"):
    """A tar of a whole root filesystem in S3 (or any S3-compatible store)."""

    bucket: str
    key: str


ImageSourceRequest = DockerSource | S3Source
Int32 = Annotated[int, msgspec.Meta(extra_json_schema={"extra": {"format": "int32"}})]
Int64 = Annotated[int, msgspec.Meta(extra_json_schema={"extra": {"format": "int64"}})]


class CreateBaseImageRequest(msgspec.Struct, kw_only=True):
    image_name: str
    source: ImageSourceRequest
    size_mib: Annotated[
        int | None,
        msgspec.Meta(
            description="Additional capacity in MiB beyond the files (default 256, 0-32768)"
        ),
    ] = None
    description: str | None = None


class CreateBaseImageResponse(msgspec.Struct):
    job_id: str
    image_name: str
    status: str


class UploadBaseImageResponse(msgspec.Struct):
    job_id: str
    image_name: str
    status: str


class BaseImageStatusResponse(msgspec.Struct):
    image_name: str
    status: str
    size_mib: Int32
    error_message: str | None = None


class BaseImageInfo(msgspec.Struct):
    base_image_id: str
    image_name: str
    owner_id: str
    is_public: bool
    source_type: str
    size_mib: Int32
    created_at: str
    description: str | None = None


class ListBaseImagesResponse(msgspec.Struct):
    images: list[BaseImageInfo]
    total: Int64
    limit: Int64
    offset: Int64


class DeleteBaseImageResponse(msgspec.Struct):
    deleted: bool
    base_image_id: str
