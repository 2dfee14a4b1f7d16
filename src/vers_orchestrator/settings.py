"""The one settings object, read from the environment by the CLI and passed down."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "VERS_ORCHESTRATOR_"


class SettingsError(ValueError):
    """A setting in the environment has a value we cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("data")
    # Empty means "a SQLite file inside data_dir"; see `effective_database_url`.
    database_url: str = ""
    log_level: str = "INFO"
    # How long a verified API key is remembered without asking the database again; 0
    # disables the cache. Revocations do not wait for it: every server polls a revocation
    # counter four times a second and forgets its cache when it moves (services/keys.py).
    auth_cache_seconds: float = 5.0
    max_body_bytes: int = 1024 * 1024
    # A connection must send a whole request head (request line and headers) within this
    # many seconds of opening or of its previous response, else it is closed (408 when part
    # of a head came); the head may be at most `max_header_bytes` long (431 beyond).
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 64 * 1024
    # A request body that sends nothing for this long, while the server is ready to read
    # it, gets 408 and the connection is closed.
    body_timeout_seconds: float = 30.0
    # The JSON (base64) form of the files routes carries files up to this size, and exec
    # bodies (stdin) may be as large; raw file transfers have no limit but the guest's disk.
    max_file_bytes: int = 64 * 1024 * 1024
    # Exec output kept on disk per VM for `logs` and `exec/stream/attach`; the oldest goes.
    exec_log_bytes_per_vm: int = 16 * 1024 * 1024
    idempotency_ttl_seconds: int = 24 * 3600
    # A retry of a request still running waits this long for its answer before a 409;
    # under the official SDK's 30 s timeout, so the SDK sees the 409 and not a timeout.
    idempotency_wait_seconds: float = 25.0
    postgres_pool_size: int = 16
    # "auto" uses KVM when it can run the guest kernel and TCG otherwise; "kvm"/"tcg" force.
    vm_accelerator: str = "auto"
    # Address space randomization inside guests: "auto" turns it off under TCG, where it
    # makes every process start twice as slow, and keeps it under KVM; "on" or "off".
    vm_guest_aslr: str = "auto"
    # "nat": guests reach the outside (never the host's loopback services); "none": guests
    # send nothing out. Forwards into guests (SSH, the edge) work either way.
    vm_network: str = "nat"
    # None means a folder inside data_dir; see `effective_images_dir`, `effective_vm_state_dir`.
    images_dir: Path | None = None
    vm_state_dir: Path | None = None
    # VM RAM and QEMU sockets: tmpfs, and short, as unix socket paths are limited to 107 bytes.
    # The driver refuses it unless it is a directory of ours that only we can enter.
    vm_runtime_dir: Path = Path("/dev/shm/vers-orchestrator")  # noqa: S108
    # Server-wide caps on live VMs, checked before a VM is made (429 beyond them). Memory
    # counts each VM's full RAM size; 0 means three quarters of the host's memory.
    max_vms: int = 32
    max_vm_memory_mib: int = 0
    # The disks of live VMs together (their full sizes, though a disk takes space only as
    # the guest writes it); 0 means the free space of the VM state directory's filesystem
    # at the time of the request (`vm_disk_budget_mib`).
    max_vm_disk_mib: int = 0
    # Simple handlers are called without Litestar's per-request pipeline (api/direct.py);
    # the replies are the same either way. Off is a way to rule that path out.
    direct_handler_calls: bool = True
    # Users' images (issue 12). Registry credentials: a containers-style auth.json; registries
    # ("host:port") spoken to over plain HTTP; the S3 endpoint (empty: AWS itself, with
    # boto3's own AWS_* settings); builds at once (more wait `pending`); upload size.
    registry_auth_file: Path | None = None
    insecure_registries: frozenset[str] = frozenset()
    s3_endpoint_url: str | None = None
    # Buckets images may come from; empty: any the server's credentials can read (then
    # every key holder can read those buckets through an image).
    s3_buckets: frozenset[str] = frozenset()
    max_image_builds: int = 1
    # Custom domains must answer the hosted service's DNS-readiness check before they are
    # made (reserved test names never are); off for private deployments (issue 13).
    domain_check: bool = True
    max_image_upload_bytes: int = 1024 * 1024 * 1024
    # The edge proxy (issue 13): 0 turns it off. VMs are reached at `<vm_id>.vm.<base>`,
    # `<port>-<vm_id>.vm.<base>` and their custom domains; TLS when both files are given.
    edge_port: int = 0
    edge_host: str = "127.0.0.1"
    edge_base_domain: str = "localhost"
    edge_tls_cert: Path | None = None
    edge_tls_key: Path | None = None
    # Deploy (issue 13) clones `<deploy_git_base_url>/<owner>/<repo>.git`, with the token
    # (if any) as HTTP basic credentials; off answers 501.
    deploy_enabled: bool = True
    deploy_git_base_url: str = "https://github.com"
    # Kept out of the settings' repr, which may be logged.
    deploy_git_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        defaults = cls()
        try:
            settings = cls(
                data_dir=Path(get("DATA_DIR") or defaults.data_dir),
                database_url=get("DATABASE_URL") or "",
                log_level=(get("LOG_LEVEL") or defaults.log_level).upper(),
                auth_cache_seconds=float(get("AUTH_CACHE_SECONDS") or defaults.auth_cache_seconds),
                max_body_bytes=int(get("MAX_BODY_BYTES") or defaults.max_body_bytes),
                header_timeout_seconds=float(
                    get("HEADER_TIMEOUT_SECONDS") or defaults.header_timeout_seconds
                ),
                max_header_bytes=int(get("MAX_HEADER_BYTES") or defaults.max_header_bytes),
                body_timeout_seconds=float(
                    get("BODY_TIMEOUT_SECONDS") or defaults.body_timeout_seconds
                ),
                max_file_bytes=int(get("MAX_FILE_BYTES") or defaults.max_file_bytes),
                exec_log_bytes_per_vm=int(
                    get("EXEC_LOG_BYTES_PER_VM") or defaults.exec_log_bytes_per_vm
                ),
                idempotency_ttl_seconds=int(
                    get("IDEMPOTENCY_TTL_SECONDS") or defaults.idempotency_ttl_seconds
                ),
                idempotency_wait_seconds=float(
                    get("IDEMPOTENCY_WAIT_SECONDS") or defaults.idempotency_wait_seconds
                ),
                postgres_pool_size=int(get("POSTGRES_POOL_SIZE") or defaults.postgres_pool_size),
                vm_accelerator=_choice(
                    "VM_ACCELERATOR", get("VM_ACCELERATOR") or defaults.vm_accelerator
                ),
                vm_guest_aslr=_choice(
                    "VM_GUEST_ASLR",
                    get("VM_GUEST_ASLR") or defaults.vm_guest_aslr,
                    GUEST_ASLR_CHOICES,
                ),
                vm_network=_choice(
                    "VM_NETWORK", get("VM_NETWORK") or defaults.vm_network, VM_NETWORKS
                ),
                images_dir=_optional_path(get("IMAGES_DIR")),
                vm_state_dir=_optional_path(get("VM_STATE_DIR")),
                vm_runtime_dir=Path(get("VM_RUNTIME_DIR") or defaults.vm_runtime_dir),
                max_vms=int(get("MAX_VMS") or defaults.max_vms),
                max_vm_memory_mib=int(get("MAX_VM_MEMORY_MIB") or defaults.max_vm_memory_mib),
                max_vm_disk_mib=int(get("MAX_VM_DISK_MIB") or defaults.max_vm_disk_mib),
                direct_handler_calls=_flag("DIRECT_HANDLER_CALLS", get("DIRECT_HANDLER_CALLS")),
                registry_auth_file=_optional_path(get("REGISTRY_AUTH_FILE")),
                insecure_registries=_comma_separated(get("INSECURE_REGISTRIES")),
                s3_endpoint_url=get("S3_ENDPOINT_URL"),
                s3_buckets=_comma_separated(get("S3_BUCKETS")),
                domain_check=_flag("DOMAIN_CHECK", get("DOMAIN_CHECK")),
                max_image_builds=_positive("MAX_IMAGE_BUILDS", get("MAX_IMAGE_BUILDS"), 1),
                max_image_upload_bytes=int(
                    get("MAX_IMAGE_UPLOAD_BYTES") or defaults.max_image_upload_bytes
                ),
                edge_port=_port("EDGE_PORT", get("EDGE_PORT")),
                edge_host=get("EDGE_HOST") or defaults.edge_host,
                edge_base_domain=(get("EDGE_BASE_DOMAIN") or defaults.edge_base_domain)
                .lower()
                .strip("."),
                edge_tls_cert=_optional_path(get("EDGE_TLS_CERT")),
                edge_tls_key=_optional_path(get("EDGE_TLS_KEY")),
                deploy_enabled=_flag("DEPLOY_ENABLED", get("DEPLOY_ENABLED")),
                deploy_git_base_url=(
                    get("DEPLOY_GIT_BASE_URL") or defaults.deploy_git_base_url
                ).rstrip("/"),
                deploy_git_token=get("DEPLOY_GIT_TOKEN"),
            )
            if (settings.edge_tls_cert is None) != (settings.edge_tls_key is None):
                raise ValueError(
                    f"{ENV_PREFIX}EDGE_TLS_CERT and {ENV_PREFIX}EDGE_TLS_KEY go together"
                )
            return settings
        except ValueError as exc:
            raise SettingsError(f"invalid {ENV_PREFIX}* setting: {exc}") from exc

    @property
    def max_bulk_body_bytes(self) -> int:
        """The body limit of the routes that carry files or stdin: a file of
        `max_file_bytes` in base64, with room for the rest of the JSON."""
        return -(-self.max_file_bytes // 3) * 4 + 64 * 1024

    @property
    def effective_images_dir(self) -> Path:
        return self.images_dir or self.data_dir / "images"

    @property
    def effective_vm_state_dir(self) -> Path:
        return self.vm_state_dir or self.data_dir / "vm-state"

    @property
    def image_builds_dir(self) -> Path:
        """Where image sources are fetched and unpacked while they build (and uploads land):
        on disk beside the data, never in a tmpfs /tmp."""
        return self.data_dir / "image-builds"

    @property
    def vm_node(self) -> str:
        """This server's name for the VMs it runs: the host and the driver's state folder."""
        return f"{socket.gethostname()}:{self.effective_vm_state_dir.resolve()}"

    @property
    def effective_max_vm_memory_mib(self) -> int:
        if self.max_vm_memory_mib:
            return self.max_vm_memory_mib
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages * 3 // 4 // (1024 * 1024)

    def vm_disk_budget_mib(self) -> int:
        """MiB the disks of this server's live VMs may add up to: `max_vm_disk_mib`, else
        the space free now on the filesystem of the VM state directory (or of the nearest
        existing folder above it, before it is made)."""
        if self.max_vm_disk_mib:
            return self.max_vm_disk_mib
        folder = self.effective_vm_state_dir.resolve()
        while not folder.exists():
            folder = folder.parent
        stats = os.statvfs(folder)
        return stats.f_bavail * stats.f_frsize // (1024 * 1024)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'orchestrator.sqlite3').resolve()}"

    @property
    def sqlite_path(self) -> Path | None:
        url = self.effective_database_url
        return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None

    @property
    def uses_postgres(self) -> bool:
        return self.effective_database_url.startswith(("postgresql://", "postgres://"))


VM_ACCELERATORS = ("auto", "kvm", "tcg")
GUEST_ASLR_CHOICES = ("auto", "on", "off")
VM_NETWORKS = ("nat", "none")


def _choice(name: str, value: str, choices: tuple[str, ...] = VM_ACCELERATORS) -> str:
    if value not in choices:
        raise ValueError(f"{ENV_PREFIX}{name} must be one of {', '.join(choices)}")
    return value


def _flag(name: str, value: str | None, default: bool = True) -> bool:
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_PREFIX}{name} must be true or false")


def _comma_separated(value: str | None) -> frozenset[str]:
    return frozenset(item.strip() for item in (value or "").split(",") if item.strip())


def _positive(name: str, value: str | None, default: int) -> int:
    number = default if value is None else int(value)
    if number < 1:
        raise ValueError(f"{ENV_PREFIX}{name} must be at least 1, not {number}")
    return number


def _port(name: str, value: str | None) -> int:
    number = 0 if value is None else int(value)
    if not 0 <= number <= 65535:
        raise ValueError(f"{ENV_PREFIX}{name} must be a port number (0 turns it off)")
    return number


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None
