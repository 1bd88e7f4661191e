"""Every file tracer writes is checked before any work and written under a temporary name
beside its target, then renamed into place only when complete: a failed or interrupted run
leaves each target as it was (or absent), never half-written, and no temporary file behind.
"""
import contextlib
import errno
import os
from pathlib import Path
import re
import shutil
import signal
import tempfile

from tracer.errors import InputError, OutputError, OutputExistsError

PART_SUFFIX = ".part"
NAME_LIMIT = 100  # characters of a file name made from a scenario's `name`
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DEFERRED = (signal.SIGINT, signal.SIGTERM)
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def safe_file_name(name, suffix):
    """A file name in the current folder made from `name`: letters, digits and `-_.` are kept,
    every other character becomes `_`, leading dots are dropped (so never `..` or a hidden file),
    at most NAME_LIMIT characters (`scenario` if none is left); `suffix` is appended."""
    stem = _UNSAFE.sub("_", name).lstrip(".")[:NAME_LIMIT]
    return (stem or "scenario") + suffix


def cannot_write(path, error):
    """The OutputError for an OSError met while writing `path` (exit 1 for a full disk: the
    input was fine; 2 otherwise: the path is the problem)."""
    problem = error.strerror or str(error)
    return OutputError(f"cannot write {path}: {problem}", exit_code=1 if error.errno in _DISK_FULL else 2)


def check_targets(targets, force=False):
    """Check every output before any work, in the order given.

    Args:
        targets: {option or label: path or None}, e.g. {"-o": "x.xlsx", "--trace": None}.
        force: an existing file may be replaced.
    Raises:
        InputError: two options name the same file.
        OutputExistsError: a target exists and not `force`.
        OutputError: a target is a folder or a device, its folder is missing or not a folder, its
            name is longer than the file system allows, or no file can be created in its folder.
    """
    chosen = [(label, Path(path)) for label, path in targets.items() if path is not None]
    for number, (label, target) in enumerate(chosen):
        try:
            for other_label, other in chosen[:number]:
                if _same_file(target, other):
                    raise InputError(f"{other_label} and {label} name the same file {other}; give two different files")
            _check_target(target, force)
        except OSError as exc:  # looking the path up failed: a name too long, a loop of links
            raise cannot_write(target, exc) from None


def _same_file(first, second):
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    return first.exists() and second.exists() and os.path.samefile(first, second)


def _check_target(target, force):
    written = _written(target)
    folder = _folder_of(written)
    _check_folder(folder)
    _check_name(target, written, folder)
    if written.is_dir():
        raise OutputError(f"{target} is a folder; give a file name")
    _refuse_special(target)
    if written.exists() and not force:
        raise OutputExistsError(f"{target} exists; use --force to replace it")
    with signals_deferred():  # a probe: can a temporary be created beside the target?
        try:
            handle, probe = tempfile.mkstemp(prefix=_temporary_prefix(written), suffix=PART_SUFFIX, dir=folder)
        except OSError as exc:
            raise cannot_write(target, exc) from None
        os.close(handle)
        os.unlink(probe)


def _written(target):
    """The file a write to `target` replaces: a symbolic link is followed, as open() would, so the
    link stays and the file it names is replaced."""
    try:
        linked = target.is_symlink()
    except OSError:  # a name too long to look up is refused where it is checked
        return target
    return Path(os.path.realpath(target)) if linked else target


def _refuse_special(target):
    """A device, pipe or socket (/dev/null, a terminal) would be replaced by a regular file."""
    written = _written(target)
    if written.exists() and not written.is_file():
        raise OutputError(f"{target} is not a regular file; give a file name")


def _check_name(target, written, folder):
    if len(os.fsencode(written.name)) > _name_limit(folder):
        raise cannot_write(target, OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)))


def _folder_of(target):
    return target.parent if str(target.parent) else Path(".")


def _check_folder(folder):
    if not folder.exists():
        raise OutputError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder")


def _name_limit(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _temporary_prefix(target):
    """`.NAME.` with NAME cut short, so the temporary's name fits wherever the target's does."""
    return f".{target.name[:40]}."


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path beside `target`; when the block completes, give it the usual
    permissions (0666 less the umask) and rename it to `target`; on any error or signal
    remove it. An OSError becomes an OutputError naming `target`."""
    target = Path(target)
    temporary = temporary_beside(target)
    try:
        yield temporary
        commit(temporary, target)
    except OSError as exc:
        raise cannot_write(target, exc) from None
    finally:
        abandon(temporary)


@contextlib.contextmanager
def atomic_paths(*targets):
    """Like atomic_path for several targets written by one run: yield a temporary path beside
    each target (None for a None target); when the block completes, rename them all into place
    together, with SIGINT and SIGTERM held back until the last rename, so the targets are either
    all as they were or all new, never a mix. On any error or signal remove every temporary."""
    temporaries = []
    try:
        for target in targets:
            temporaries.append(None if target is None else temporary_beside(target))
        yield temporaries
        chosen = [(temporary, Path(target)) for temporary, target in zip(temporaries, targets) if target is not None]
        with signals_deferred():
            for _, target in chosen:
                _refuse_special(target)
            for temporary, target in chosen:
                commit(temporary, target)
    finally:
        for temporary in temporaries:
            if temporary is not None:
                abandon(temporary)


def temporary_beside(target):
    """Create an empty temporary file `.NAME.XXXX.part` in the folder of `target` (of the file it
    names, for a symbolic link) and return its path."""
    written = _written(Path(target))
    folder = _folder_of(written)
    with signals_deferred():
        try:
            _check_folder(folder)
            _check_name(target, written, folder)
            handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(written), suffix=PART_SUFFIX, dir=folder)
        except OSError as exc:
            raise cannot_write(target, exc) from None
        os.close(handle)
    return Path(temporary)


def commit(temporary, target):
    """Rename the complete `temporary` to `target` (0666 less the umask, as open() would make it;
    through a symbolic link to the file it names)."""
    target = Path(target)
    _refuse_special(target)
    with signals_deferred():
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, _written(target))
        except OSError as exc:
            raise cannot_write(target, exc) from None


def abandon(temporary):
    """Remove `temporary` if it is still there (after a failure, or harmlessly after commit)."""
    with signals_deferred():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back for the block and deliver them when it ends, so that a file is
    never left created but unrecorded, or half-renamed. (A handler that records them, rather than
    a signal mask: a mask is per thread, and numpy's threads would take the signal instead.)
    A no-op outside the main thread, where handlers cannot be set."""
    pending = []
    try:
        previous = {number: signal.signal(number, lambda received, frame: pending.append(received))
                    for number in _DEFERRED}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in dict.fromkeys(pending):
            signal.raise_signal(number)


@contextlib.contextmanager
def private_tempdir():
    """Give this process its own folder for temporary files (openpyxl's sheet streams, verify's
    copies, LibreOffice's profile) inside the usual one, and remove it with everything in it when
    the block ends, however it ends. OutputError when no temporary folder can be made (TMPDIR
    and the usual places missing, not writable or full)."""
    previous, folder = tempfile.tempdir, None
    try:
        with signals_deferred():
            try:
                folder = tempfile.mkdtemp(prefix="tracer-")
            except OSError as exc:
                raise OutputError(f"cannot create a temporary folder (TMPDIR, /tmp): {exc.strerror or exc}") from None
            tempfile.tempdir = folder
        yield folder
    finally:
        with signals_deferred():
            tempfile.tempdir = previous
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
