"""The ``checkpoint`` state file and turning a directory or file name into a prefix.

The state file is a ``CheckpointState`` in protobuf text format, written by TensorFlow's
``Saver``/``CheckpointManager``::

    model_checkpoint_path: "model.ckpt-1000"
    all_model_checkpoint_paths: "model.ckpt-500"
    all_model_checkpoint_paths: "model.ckpt-1000"

Relative paths are relative to the directory. Other fields (timestamps, fields of newer
TF versions) are skipped. Strings use C escapes (octal for non-ASCII bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import tempfile

from gpuload.errors import (
    ArgumentTypeError,
    CheckpointFileError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    UnsupportedCheckpointError,
)
from gpuload.format.commit import JOURNAL_SUFFIX, prefix_lock, recover
from gpuload.format.files import NotRegularFileError, read_regular

__all__ = [
    "CheckpointState",
    "parse_checkpoint_state",
    "get_checkpoint_state",
    "latest_checkpoint",
    "resolve_prefix",
    "update_checkpoint_state",
    "format_checkpoint_state",
]

STATE_FILENAME = "checkpoint"
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


@dataclasses.dataclass
class CheckpointState:
    """The two fields of ``CheckpointState`` that matter (paths as written, unless resolved)."""

    model_checkpoint_path: str = ""
    all_model_checkpoint_paths: list[str] = dataclasses.field(default_factory=list)


# --- text-format parsing ----------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\v,;]+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[:{}<>\[\]])
  | (?P<word>[A-Za-z0-9_.+\-/]+)
    """,
    re.VERBOSE | re.DOTALL,
)

_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}


def _unescape(body: str, fail) -> bytes:
    """C-unescape the inside of a quoted string (``body`` holds one char per input byte)."""
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out.append(ord(c))
            i += 1
            continue
        i += 1
        if i >= n:
            raise fail("string ends with a lone backslash")
        c = body[i]
        if c in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[c])
            i += 1
        elif c in "01234567":
            j = i
            while j < n and j < i + 3 and body[j] in "01234567":
                j += 1
            v = int(body[i:j], 8)
            if v > 255:
                raise fail(f"octal escape \\{body[i:j]} is above \\377")
            out.append(v)
            i = j
        elif c in "xX":
            j = i + 1
            while j < n and j < i + 3 and body[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i + 1:
                raise fail("\\x escape without hex digits")
            out.append(int(body[i + 1 : j], 16))
            i = j
        elif c in "uU":
            k = 4 if c == "u" else 8
            digits = body[i + 1 : i + 1 + k]
            if len(digits) != k or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise fail(f"\\{c} escape needs {k} hex digits")
            try:
                out += chr(int(digits, 16)).encode("utf-8")
            except (ValueError, UnicodeEncodeError, OverflowError):
                raise fail(f"\\{c}{digits} is not a valid code point") from None
            i += 1 + k
        else:
            raise fail(f"unknown escape \\{c}")
    return bytes(out)


def parse_checkpoint_state(text, path=None) -> CheckpointState:
    """Parse the text of a ``checkpoint`` state file.

    Parameters
    ----------
    text:
        The file's contents (``bytes`` or ``str``).
    path:
        The file name, for error messages.

    Raises
    ------
    CheckpointFormatError
        When the text is not a well-formed ``CheckpointState`` text proto.
    """
    raw = (
        text.decode("latin-1")
        if isinstance(text, (bytes, bytearray))
        else text.encode("utf-8", "surrogateescape").decode("latin-1")
    )
    tokens = []  # (kind, value, line)
    pos, line = 0, 1
    while pos < len(raw):
        m = _TOKEN.match(raw, pos)
        if m is None:
            raise CheckpointFormatError(
                f"malformed checkpoint state file: unexpected character {raw[pos]!r} at line {line}", path=path
            )
        kind = m.lastgroup
        if kind != "ws":
            tokens.append((kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()

    def fail_at(i):
        where = f"line {tokens[i][2]}" if i < len(tokens) else "end of file"
        return lambda msg: CheckpointFormatError(f"malformed checkpoint state file: {msg} at {where}", path=path)

    # Iterative (an explicit stack of open messages and lists): a state file nesting
    # messages a million deep is a format error, not a RecursionError.
    state = CheckpointState()
    wanted = ("model_checkpoint_path", "all_model_checkpoint_paths")
    stack: list[str] = []  # what closes each open block: "}", ">" (messages) or "]" (lists)
    n = len(tokens)
    i = 0

    def strings(i):
        parts = []
        while i < n and tokens[i][0] == "str":  # adjacent literals concatenate
            parts.append(_unescape(tokens[i][1][1:-1], fail_at(i)))
            i += 1
        return b"".join(parts), i

    def open_or_scalar(i):
        """Consume one value that is not a string; return the next index (pushing blocks)."""
        kind, tok, _ = tokens[i]
        if kind == "word":
            return i + 1
        if tok in ("{", "<"):
            stack.append("}" if tok == "{" else ">")
            return i + 1
        if tok == "[":
            stack.append("]")
            return i + 1
        raise fail_at(i)(f"unexpected {tok!r}")

    while True:
        closer = stack[-1] if stack else None
        if i >= n:
            if closer is None:
                break
            raise fail_at(i)("unterminated list" if closer == "]" else f"missing {closer!r}")
        kind, tok, _ = tokens[i]
        if closer is not None and tok == closer:
            stack.pop()
            i += 1
            continue
        if closer == "]":  # a list element
            if kind == "str":
                _, i = strings(i)
            else:
                i = open_or_scalar(i)
            continue
        # a field: name [":"] value
        start = i
        if tok == "[":  # extension / Any type URL: [a.b.c]
            j = i + 1
            while j < n and tokens[j][1] != "]":
                j += 1
            if j >= n:
                raise fail_at(i)("unterminated extension name")
            name, i = None, j + 1
        elif kind == "word":
            name, i = tok, i + 1
        else:
            raise fail_at(i)(f"expected a field name, found {tok!r}")
        if i < n and tokens[i][1] == ":":
            i += 1
        elif i >= n or tokens[i][1] not in "{<":
            raise fail_at(i)(f"expected ':' after field name {name!r}")
        if i >= n:
            raise fail_at(i)("missing field value")
        top = not stack and name in wanted
        if tokens[i][0] == "str":
            v, i = strings(i)
            if top:
                s = os.fsdecode(v)
                if name == "model_checkpoint_path":
                    state.model_checkpoint_path = s
                else:
                    state.all_model_checkpoint_paths.append(s)
        else:
            if top:
                raise fail_at(start)(f"field {name} needs a quoted string")
            i = open_or_scalar(i)
    return state


def get_checkpoint_state(checkpoint_dir, latest_filename: str | None = None) -> CheckpointState | None:
    """The directory's ``CheckpointState`` with relative paths joined to it, or ``None``.

    Like ``tf.train.get_checkpoint_state`` except that a malformed file raises
    :class:`~gpuload.errors.CheckpointFormatError` instead of logging and returning
    ``None``: a corrupt state file deserves a message that names it.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    path = os.path.join(checkpoint_dir, latest_filename or STATE_FILENAME)
    if not os.path.exists(path):
        return None
    try:
        text, _ = read_regular(path)
    except NotRegularFileError as e:
        raise CheckpointFileError.not_regular("checkpoint state file", path, e) from None
    except FileNotFoundError:
        return None
    state = parse_checkpoint_state(text, path)
    if not state.model_checkpoint_path:
        raise CheckpointFormatError("invalid checkpoint state: model_checkpoint_path is empty or missing", path=path)

    def join(p):
        return p if os.path.isabs(p) else os.path.join(checkpoint_dir, p)

    return CheckpointState(join(state.model_checkpoint_path), [join(p) for p in state.all_model_checkpoint_paths])


def _is_v2(prefix: str) -> bool:
    return os.path.isfile(prefix + ".index")


def _is_v1(prefix: str) -> bool:
    return os.path.isfile(prefix) or bool(glob.glob(glob.escape(prefix) + "-?????-of-?????"))


def latest_checkpoint(checkpoint_dir, latest_filename: str | None = None) -> str | None:
    """The prefix the directory's ``checkpoint`` state file names, if its files exist.

    Follows ``tf.train.latest_checkpoint``: returns the prefix when ``prefix.index``
    (or a legacy V1 file) exists, else ``None``; the directory is not scanned. One
    addition: when the recorded path is gone but a checkpoint of the same base name sits in
    ``checkpoint_dir`` (the directory was moved or copied), that one is returned.

    Raises
    ------
    CheckpointFormatError
        When the state file exists but cannot be parsed or names no checkpoint.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    state = get_checkpoint_state(checkpoint_dir, latest_filename)
    if state is None:
        return None
    # A state file may name one of the checkpoint's files ("model.ckpt.index"): its prefix is meant.
    prefix = _strip_file_suffix(state.model_checkpoint_path)
    if _is_v2(prefix) or _is_v1(prefix):
        return prefix
    moved = os.path.join(checkpoint_dir, os.path.basename(prefix))
    if moved != prefix and (_is_v2(moved) or _is_v1(moved)):
        return moved
    return None


def _strip_file_suffix(path: str) -> str:
    if path.endswith(".index") and not _is_v2(path):
        return path[: -len(".index")]
    m = _DATA_SUFFIX.search(path)
    if m and not _is_v2(path):
        return path[: m.start()]
    return path


def _v1_error(prefix: str) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(
        f"legacy V1 checkpoint at {prefix!r} (table file(s) without a '.index'); gpuload reads only "
        "TensorBundle V2 checkpoints (TF >= 1.0 default). Re-save it with TensorFlow using "
        "tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V2)",
        path=prefix,
    )


def _recover_if_needed(prefix: str) -> None:
    """Finish a save of ``prefix`` that was committed but interrupted (see :mod:`.commit`)."""
    if os.path.exists(prefix + JOURNAL_SUFFIX):
        try:
            recover(prefix)
        except OSError as e:
            raise CheckpointFormatError(
                f"a save of this checkpoint was interrupted after it committed, and finishing it failed: {e}. "
                f"Open it once with write access to its directory",
                path=prefix + JOURNAL_SUFFIX,
            ) from None


def resolve_prefix(ckpt_dir_or_file) -> str:
    """The checkpoint prefix for a directory, a prefix, or one of a checkpoint's files.

    Parameters
    ----------
    ckpt_dir_or_file:
        A directory (its ``checkpoint`` state file names the latest checkpoint), a prefix
        such as ``/ckpt/model.ckpt-100``, or a file of the checkpoint
        (``....index``, ``....data-00000-of-00001``). ``str``, ``bytes`` or ``os.PathLike``.

    Returns
    -------
    str
        A prefix ``P`` for which ``P.index`` exists.

    Raises
    ------
    CheckpointNotFoundError
        Nothing found; the message says what was looked for.
    UnsupportedCheckpointError
        A legacy V1 checkpoint.
    CheckpointFormatError
        A malformed state file.
    """
    try:
        path = os.fsdecode(os.fspath(ckpt_dir_or_file))
    except TypeError:
        raise ArgumentTypeError(
            f"ckpt_dir_or_file must be a checkpoint directory or prefix (str, bytes or os.PathLike), got "
            f"{type(ckpt_dir_or_file).__name__}: {ckpt_dir_or_file!r}"
        ) from None
    if not path:
        raise CheckpointNotFoundError("empty checkpoint path")
    if os.path.isdir(path):
        path = path.rstrip("/" + os.sep) or path
        prefix = latest_checkpoint(path)
        if prefix is None:
            state_path = os.path.join(path, STATE_FILENAME)
            if os.path.isfile(state_path):
                named = get_checkpoint_state(path).model_checkpoint_path
                raise CheckpointNotFoundError(
                    f"checkpoint directory {path!r}: the 'checkpoint' state file names {named!r}, but neither "
                    f"{named + '.index'!r} nor {os.path.join(path, os.path.basename(named)) + '.index'!r} exists"
                )
            found = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
            hint = ""
            if found:
                names = ", ".join(repr(f[: -len(".index")]) for f in found[:5])
                hint = f"; it holds checkpoint(s) {names}{' ...' if len(found) > 5 else ''}: pass a prefix"
            raise CheckpointNotFoundError(
                f"no checkpoint in directory {path!r}: no 'checkpoint' state file and no {path + '.index'!r}{hint}"
            )
        _recover_if_needed(prefix)
        if not _is_v2(prefix):
            raise _v1_error(prefix)
        return prefix
    prefix = _strip_file_suffix(path)
    _recover_if_needed(prefix)
    if _is_v2(prefix):
        return prefix
    if _is_v1(prefix):
        raise _v1_error(prefix)
    raise CheckpointNotFoundError(
        f"no checkpoint at {path!r}: it is not a directory (with a 'checkpoint' state file) and "
        f"{prefix + '.index'!r} does not exist"
    )


# --- writing ----------------------------------------------------------------------------


def _quote(s: str) -> str:
    """Protobuf text-format string literal (C escapes, octal for non-ASCII bytes)."""
    out = ['"']
    for b in os.fsencode(s):
        c = chr(b)
        if c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c in "\"'\\":
            out.append("\\" + c)
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    out.append('"')
    return "".join(out)


def format_checkpoint_state(model_checkpoint_path: str, all_model_checkpoint_paths) -> str:
    """The text TensorFlow writes for these two fields."""
    lines = [f"model_checkpoint_path: {_quote(model_checkpoint_path)}"]
    lines += [f"all_model_checkpoint_paths: {_quote(p)}" for p in all_model_checkpoint_paths]
    return "\n".join(lines) + "\n"


def update_checkpoint_state(directory, prefix, all_prefixes=None, *, latest_filename: str | None = None) -> str:
    """Record ``prefix`` as the latest checkpoint in ``directory``'s state file, atomically.

    Parameters
    ----------
    directory:
        The checkpoint directory.
    prefix:
        The checkpoint just written.
    all_prefixes:
        Every checkpoint to list, oldest first. ``None``: the ones already listed (that
        still exist), then ``prefix``; as a ``Saver`` with no ``max_to_keep`` limit.
    latest_filename:
        State file name (default ``checkpoint``).

    Returns
    -------
    str
        The state file's path. Paths inside ``directory`` are written relative to it.
    """
    directory = os.fsdecode(os.fspath(directory))
    prefix = os.fsdecode(os.fspath(prefix))
    os.makedirs(directory or ".", exist_ok=True)
    # Read-modify-write of one file: savers of different prefixes in one directory take turns.
    name = latest_filename or STATE_FILENAME
    with prefix_lock(os.path.join(directory, name)):
        leftover = re.compile(rf"^{re.escape(name)}\.tmp[A-Za-z0-9_]{{8}}$")  # of a write that was killed
        for f in os.listdir(directory or "."):
            if leftover.match(f):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, f))
        return _update_checkpoint_state(directory, prefix, all_prefixes, latest_filename)


def _update_checkpoint_state(directory, prefix, all_prefixes, latest_filename):
    absdir = os.path.abspath(directory)

    def rel(p):
        ap = os.path.abspath(p)
        try:
            inside = os.path.commonpath([absdir, ap]) == absdir
        except ValueError:
            inside = False
        return os.path.relpath(ap, absdir) if inside else ap

    if all_prefixes is None:
        old = []
        try:
            st = get_checkpoint_state(directory, latest_filename)
        except CheckpointFormatError:
            st = None  # a corrupt state file is replaced, as TF's Saver does
        if st is not None:
            old = [p for p in st.all_model_checkpoint_paths if _is_v2(p)]
        all_prefixes = old + [prefix]
    paths = []
    for p in all_prefixes:
        r = rel(os.fsdecode(os.fspath(p)))
        if r in paths:
            paths.remove(r)
        paths.append(r)
    latest = rel(prefix)
    if paths[-1:] != [latest]:
        if latest in paths:
            paths.remove(latest)
        paths.append(latest)
    text = format_checkpoint_state(latest, paths)
    target = os.path.join(directory, latest_filename or STATE_FILENAME)
    _atomic_write(target, text)
    return target


def _atomic_write(target: str, text: str) -> None:
    """Replace ``target`` by ``text``: temporary file, ``fsync``, rename, ``fsync`` of the directory.

    Readers see the old or the new content, never a mix, and after a crash one of the two
    is there (TF's ``atomic_write_string_to_file``, plus the fsyncs it leaves out).
    """
    from gpuload.format.commit import fsync_dir

    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)
