"""Outputs: checked before any work, written under a temporary name beside the target and renamed
only when complete; a failed write (full disk, missing folder, long name) leaves nothing behind."""
import errno
import os
import re
import signal
import tempfile

from hypothesis import given, strategies as st
import pytest

from tracer import output
from tracer.errors import InputError, OutputError, OutputExistsError


def leftovers(folder):
    """Every file in `folder` except the ones a test put there itself."""
    return sorted(p.name for p in folder.iterdir())


# --- safe file names from a scenario's `name` ---

@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b\\c", "nul\x00byte", "..", ".", "", "~", " ", "σ" * 300,
                                  "x" * 1000])
def test_safe_file_name_stays_in_the_current_folder(name):
    safe = output.safe_file_name(name, ".xlsx")
    assert safe.endswith(".xlsx") and "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert not safe.startswith(".") and len(safe) <= output.NAME_LIMIT + len(".xlsx")
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.xlsx", safe)


def test_safe_file_name_keeps_ordinary_names():
    assert output.safe_file_name("leaky-relu-explosion", ".xlsx") == "leaky-relu-explosion.xlsx"
    assert output.safe_file_name("run_2.b", ".csv") == "run_2.b.csv"
    assert output.safe_file_name("../../x", ".xlsx") == "_.._x.xlsx"
    assert output.safe_file_name("my net (v2)", ".xlsx") == "my_net__v2_.xlsx"


@given(st.text())
def test_any_name_gives_one_short_path_component(name):
    safe = output.safe_file_name(name, ".xlsx")
    assert os.path.basename(safe) == safe and safe not in (".", "..")
    assert len(os.fsencode(safe)) <= 255 and safe.isascii()


# --- checking every target before any work ---

def test_existing_target_needs_force(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="--force"):
        output.check_targets({"--trace": target})
    output.check_targets({"--trace": target}, force=True)
    assert leftovers(tmp_path) == ["a.csv"] and target.read_text() == "old"


@pytest.mark.parametrize("second", ["a.xlsx", "./a.xlsx", "sub/../a.xlsx", "link.xlsx"])
def test_one_file_for_two_outputs_is_refused(tmp_path, second):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.xlsx").symlink_to(tmp_path / "a.xlsx")
    with pytest.raises(InputError, match=r"-o and --trace .*same file") as caught:
        output.check_targets({"-o": tmp_path / "a.xlsx", "--trace": f"{tmp_path}/{second}"}, force=True)
    assert caught.value.exit_code == 2


def test_missing_folder_is_refused_not_created(tmp_path):
    target = tmp_path / "no" / "such" / "a.xlsx"
    with pytest.raises(OutputError, match=r"^folder .*no/such does not exist$") as caught:
        output.check_targets({"-o": target})
    assert caught.value.exit_code == 2 and not (tmp_path / "no").exists()


def test_a_file_as_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file is not a folder"):
        output.check_targets({"-o": tmp_path / "file" / "a.xlsx"})


def test_a_folder_as_target_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"is a folder"):
        output.check_targets({"-o": tmp_path}, force=True)


@pytest.mark.parametrize("through_link", [False, True])
def test_a_device_is_never_replaced(tmp_path, through_link):
    device = tmp_path / "null" if through_link else "/dev/null"
    if through_link:
        device.symlink_to("/dev/null")
    with pytest.raises(OutputError, match="is not a regular file"):
        output.check_targets({"--trace": device}, force=True)
    with pytest.raises(OutputError, match="is not a regular file"):
        output.commit(tmp_path / ".x.part", device)
    assert not os.path.isfile("/dev/null") and os.path.islink(device) == through_link


def test_a_link_stays_and_the_file_it_names_is_replaced(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.csv").write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(tmp_path / "runs" / "a.csv")
    output.check_targets({"--trace": link}, force=True)
    with output.atomic_path(link) as temporary:
        assert temporary.parent == tmp_path / "runs"
        temporary.write_text("new")
    assert link.is_symlink() and (tmp_path / "runs" / "a.csv").read_text() == "new"
    assert leftovers(tmp_path / "runs") == ["a.csv"]


def test_a_name_longer_than_the_filesystem_allows_is_refused(tmp_path):
    target = tmp_path / ("x" * 300 + ".xlsx")
    with pytest.raises(OutputError, match=r"^cannot write .*x\.xlsx: File name too long$") as caught:
        output.check_targets({"-o": target})
    assert caught.value.exit_code == 2 and leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_a_second_target_with_a_name_too_long_is_refused(tmp_path, existing):
    """The same-file comparison with the first target looks the second up: that too is refused."""
    first, second = tmp_path / "out.xlsx", tmp_path / ("c" * 300 + ".csv")
    if existing:
        first.write_text("old")
    with pytest.raises(OutputError, match=r"^cannot write .*c\.csv: File name too long$"):
        output.check_targets({"-o": first, "--trace": second}, force=True)
    assert leftovers(tmp_path) == (["out.xlsx"] if existing else [])


@pytest.mark.parametrize("name", ["x" * 256, "f" * 256 + "/x.csv", "d/" * 2100 + "x.csv"])
def test_a_name_too_long_is_refused_before_the_temporary_is_made(tmp_path, name):
    with pytest.raises(OutputError, match=r"File name too long$"):
        output.check_targets({"--trace": tmp_path / name})
    with pytest.raises(OutputError, match=r"File name too long$"):
        output.temporary_beside(tmp_path / name)
    assert leftovers(tmp_path) == []


def test_the_longest_allowed_name_is_accepted_and_written(tmp_path):
    target = tmp_path / ("x" * 250 + ".xlsx")
    output.check_targets({"-o": target})
    with output.atomic_path(target) as temporary:
        temporary.write_bytes(b"new")
    assert leftovers(tmp_path) == [target.name] and target.read_bytes() == b"new"


def test_unwritable_folder_is_refused(tmp_path):
    """As root, chmod does not stop writes, so /sys (which refuses new files even to root) stands
    in for a read-only folder there."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    else:
        folder = "/sys"
        if not os.path.isdir(folder) or _can_create_in(folder):
            pytest.skip("no folder that refuses writes to root here")
    with pytest.raises(OutputError, match=r"^cannot write .*a\.csv: Permission denied$") as caught:
        output.check_targets({"--trace": os.path.join(folder, "a.csv")})
    assert caught.value.exit_code == 2


def _can_create_in(folder):
    try:
        handle, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(path)
    return True


# --- writing under a temporary name ---

def test_atomic_path_renames_only_when_complete(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with output.atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith(".part")
            temporary.write_text("half")
            raise RuntimeError("stopped")
    assert leftovers(tmp_path) == ["a.csv"] and target.read_text() == "old"
    with output.atomic_path(target) as temporary:
        temporary.write_text("new")
    assert leftovers(tmp_path) == ["a.csv"] and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_path_in_a_missing_folder_says_so(tmp_path):
    with pytest.raises(OutputError, match=r"^folder .*missing does not exist$"):
        with output.atomic_path(tmp_path / "missing" / "a.csv"):
            pass
    assert leftovers(tmp_path) == []


def test_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, full_disk):
    target = tmp_path / "a.csv"
    target.write_text("old")
    full_disk(tmp_path, budget=10)
    with pytest.raises(OutputError) as caught:
        with output.atomic_path(target) as temporary:
            with open(temporary, "w") as handle:
                handle.write("x" * 100)
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert caught.value.exit_code == 1
    assert leftovers(tmp_path) == ["a.csv"] and target.read_text() == "old"


# --- signals and temporary folders ---

def test_signals_deferred_holds_sigterm_until_the_block_ends():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
    try:
        with output.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            assert received == []
        for _ in range(1000):
            pass
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_private_tempdir_takes_every_temporary_and_removes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError):
        with output.private_tempdir() as folder:
            assert tempfile.gettempdir() == folder and os.path.dirname(folder) == str(tmp_path)
            tempfile.NamedTemporaryFile(delete=False).close()
            tempfile.mkdtemp()
            raise RuntimeError("stopped")
    assert tempfile.gettempdir() == str(tmp_path) and leftovers(tmp_path) == []


@pytest.mark.parametrize("code, exit_code", [(errno.ENOSPC, 1), (errno.EDQUOT, 1), (errno.EACCES, 2), (errno.EROFS, 2)])
def test_write_errors_name_the_target_and_exit_code(code, exit_code):
    error = output.cannot_write("out/a.xlsx", OSError(code, os.strerror(code), "out/.a.xlsx.123.part"))
    assert str(error) == f"cannot write out/a.xlsx: {os.strerror(code)}" and error.exit_code == exit_code


def test_atomic_paths_renames_every_target_together_or_none(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.xlsx"
    first.write_text("old a")
    second.write_text("old b")
    with pytest.raises(RuntimeError):
        with output.atomic_paths(first, None, second) as (staged_first, nothing, staged_second):
            assert nothing is None and staged_first.parent == staged_second.parent == tmp_path
            staged_first.write_text("new a")   # complete, but the second is not
            raise RuntimeError("stopped")
    assert (first.read_text(), second.read_text()) == ("old a", "old b")
    assert leftovers(tmp_path) == ["a.csv", "b.xlsx"]
    with output.atomic_paths(first, second) as (staged_first, staged_second):
        staged_first.write_text("new a")
        staged_second.write_text("new b")
        assert first.read_text() == "old a"    # nothing is renamed before the block ends
    assert (first.read_text(), second.read_text()) == ("new a", "new b")
    assert leftovers(tmp_path) == ["a.csv", "b.xlsx"]
