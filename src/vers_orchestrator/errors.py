"""The error family. Services raise these; `api.errors` renders every one the same way.

Texts of errors the hosted service also produces are kept verbatim (lowercase), so
clients that match on them keep working.
"""

from __future__ import annotations


class VersError(Exception):
    status_code: int = 500
    message: str = "internal server error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


# 400
class BadRequest(VersError):
    status_code = 400


class BodyIncomplete(BadRequest):
    """The connection ended (or was ended, `http_server`) before the whole body came; no
    reply reaches anyone, but the handler must not act on part of a body."""

    message = "the request body ended early: the connection closed before all of it came"


class BodyNotJson(BadRequest):
    """A body that is not JSON at all; `reason` in msgspec's words (`api/bodies.py`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Failed to parse the request body as JSON: {reason}")


class InvalidQuery(BadRequest):
    """A query parameter the route cannot read, in the hosted service's (serde's) words."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Failed to deserialize query string: {reason}")


class InvalidRepositoryName(BadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid repository name: {reason}")


class InvalidField(BadRequest):
    """A string field breaks a rule that holds for every field (length, NUL)."""


class InvalidIdempotencyKey(BadRequest):
    message = "X-Idempotency-Key must be 1-255 printable ASCII characters"


class InvalidTagName(BadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid tag name: {reason}")


class InvalidCommitId(BadRequest):
    # The hosted service rejects a malformed path UUID with 400 "Invalid URL: …".
    message = "Invalid URL: commit_id must be a UUID"


class NoUpdatesProvided(BadRequest):
    message = "no updates provided"


class InvalidVmId(BadRequest):
    message = "Invalid URL: vm_id must be a UUID"


class InvalidRef(BadRequest):
    message = "Invalid ref format. Expected 'repo_name:tag_name'"


class GuestRefused(BadRequest):
    """The guest agent refused a request (a missing directory, a permission)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the VM refused: {reason}")


class NotRegularFile(BadRequest):
    """The files routes read and write regular files only; exec is for the others."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a regular file: {path}")


# 401
class Unauthorized(VersError):
    status_code = 401


class MissingCredentials(Unauthorized):
    message = "Missing or invalid Authorization header"


class InvalidCredentials(Unauthorized):
    message = "Invalid bearer token"


# 403: only for things the caller may know exist (its organization's, or public ones).
class Forbidden(VersError):
    status_code = 403
    message = "forbidden"


class KeyLimitExceeded(Forbidden):
    """The caller's API key may not use more vCPUs or memory for its live VMs."""

    def __init__(self, resource: str, limit: int, used: int, requested: int) -> None:
        super().__init__(
            f"{resource} limit exceeded: this API key's VMs may use {limit} in total,"
            f" {used} in use, {requested} requested"
        )


class InvalidImageName(BadRequest):
    message = "invalid image name"


class InvalidImageSize(BadRequest):
    message = "invalid additional capacity: must be between 0 MiB and 32768 MiB"


class InvalidBaseImageId(BadRequest):
    message = "Invalid base_image_id format"  # capitalised, as the hosted service's


class UploadNotUnderstood(BadRequest):
    """An upload that is not a tar: says what to send instead."""


# 404
class NotFound(VersError):
    status_code = 404
    message = "not found"


class EnvVarNotFound(NotFound):
    message = "Environment variable not found"  # capitalised, as the hosted service's


class RepositoryNotFound(NotFound):
    message = "repository not found"


class TagNotFound(NotFound):
    message = "tag not found"


class CommitNotFound(NotFound):
    message = "commit not found"


class ProvidedCommitNotFound(NotFound):
    # The hosted text of the branch endpoints when the tag's commit is gone.
    message = "provided commit not found"


class VmNotFound(NotFound):
    message = "vm not found"


class EdgeHostUnknown(NotFound):
    """The edge has no VM for a Host header (unknown name, a VM gone or private)."""

    message = "no VM answers at this address"


class ProjectNotFound(NotFound):
    message = "project not found"


class ParentVmNotFound(VmNotFound):
    # The hosted text of branch by VM when the VM to branch from does not exist.
    message = "parent vm not found"


class ExecNotFound(NotFound):
    message = "exec not found"


class VmOrCommitNotFound(NotFound):
    message = "vm or commit not found"


class GuestFileNotFound(NotFound):
    def __init__(self, path: str) -> None:
        super().__init__(f"file not found in the VM: {path}")


class ForkSourceNotFound(NotFound):
    message = "source repository or tag not found (must be public)"


class ImageNotFound(NotFound):
    message = "image not found"


# 409
class Conflict(VersError):
    status_code = 409


class ImageAlreadyExists(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"image name already exists: {name}")


class ImageInUse(Conflict):
    message = "image is in use by VMs"


class RepositoryAlreadyExists(Conflict):
    message = "repository already exists"


class RepoTagAlreadyExists(Conflict):
    message = "tag already exists in repository"


class TagAlreadyExists(Conflict):
    message = "tag already exists"


class CommitHasActiveVms(Conflict):
    def __init__(self, count: int) -> None:
        super().__init__(f"commit still has {count} active VM(s)")


class VmNotRunning(Conflict):
    def __init__(self, state: str) -> None:
        super().__init__(f"vm is {state}")


class VmOnAnotherServer(Conflict):
    message = "vm runs on another server of this deployment"


class ProjectNameTaken(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"project name already exists: {name}")


class RequestInProgress(Conflict):
    message = "a request with this X-Idempotency-Key is still in progress"


# 413
class PayloadTooLarge(VersError):
    status_code = 413
    message = "request body is too large"


# 415
class UnsupportedMediaType(VersError):
    status_code = 415
    message = "Expected request with `Content-Type: application/json`"


# 422
class Unprocessable(VersError):
    status_code = 422


class IdempotencyKeyReused(Unprocessable):
    message = "X-Idempotency-Key was already used for a different request"


# 429
class ServerAtCapacity(VersError):
    status_code = 429

    def __init__(self, resource: str, limit: int, used: int, requested: int) -> None:
        super().__init__(
            f"server at capacity: {used} of {limit} {resource} in use, {requested} more requested"
        )


# 500
class InternalError(VersError):
    status_code = 500
    message = "internal server error"


class VmOperationFailed(InternalError):
    """The hypervisor failed; the details are in the server's log, not in the response."""


# 501
class DeployTurnedOff(VersError):
    status_code = 501
    message = "deploy is turned off on this server"


# 502
class BadGateway(VersError):
    status_code = 502


class GuestUnavailable(BadGateway):
    """The agent inside the VM stopped answering or restarted: what it did is unknown."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the VM's agent is not answering: {reason}")


class EdgeVmNotRunning(BadGateway):
    message = "the VM is not running"


class GuestPortUnreachable(BadGateway):
    def __init__(self, port: int) -> None:
        super().__init__(f"nothing answered on port {port} of the VM")


# 503
class ServiceUnavailable(VersError):
    status_code = 503


class DatabaseUnavailable(ServiceUnavailable):
    message = "database unavailable"


class VmAsleep(ServiceUnavailable):
    """A VM the edge reached is paused or still booting."""

    def __init__(self, state: str) -> None:
        super().__init__(f"the VM is {state}")
