"""TensorFlow's native start-up noise is dropped from fd 2; everything else passes through."""

from __future__ import annotations

import os

import pytest

from streamwatch.tfquiet import filtered_native_stderr, is_noise

NOISE = [
    "E0000 00:00:1795435117.344533    1844 cuda_dnn.cc:8579] Unable to register cuDNN factory: "
    "Attempting to register factory for plugin cuDNN when one has already been registered",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "W0000 00:00:1795435117.360127    1844 computation_placer.cc:177] computation placer already "
    "registered. Please check linkage and avoid linking the same target more than once.",
    "2026-11-23 12:08:01.711199: E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51]"
    " failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1795434940.095085     617 service.cc:152] XLA service 0x7f3c20508e30 initialized "
    "for platform Host (this does not guarantee that XLA will be used). Devices:",
]


@pytest.mark.parametrize("line", NOISE)
def test_known_noise_is_recognised(line: str) -> None:
    assert is_noise(line)


def test_real_errors_are_not_noise() -> None:
    assert not is_noise("E tensorflow/core/framework/op_kernel.cc] OOM when allocating tensor")
    assert not is_noise("2026-11-23 ERROR streamwatch.daemon: cannot save alert state")


def test_block_drops_noise_and_keeps_the_rest(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_native_stderr():
        os.write(2, (NOISE[0] + "\n").encode())
        os.write(2, b"a real native error\n")
        os.write(2, (NOISE[1] + "\n").encode())
    err = capfd.readouterr().err
    assert err == "a real native error\n"


def test_verbose_switch_shows_everything(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMWATCH_TF_VERBOSE", "1")
    with filtered_native_stderr():
        os.write(2, (NOISE[0] + "\n").encode())
    assert NOISE[0] in capfd.readouterr().err


def test_exception_in_block_still_restores_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), filtered_native_stderr():
        os.write(2, b"before the failure\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before the failure\nafter\n"


def test_overlapping_uses_from_two_threads_leave_stderr_working(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Two overlapping captures (worker warm-up and a SIGHUP reload, say) must not leave fd 2
    on a deleted file: everything written is replayed and later lines still arrive
    (issue 12, item 2)."""
    import threading

    first_in = threading.Event()
    second_done = threading.Event()

    def outer() -> None:
        with filtered_native_stderr():
            os.write(2, b"from the first\n")
            first_in.set()
            second_done.wait(5)

    t = threading.Thread(target=outer)
    t.start()
    first_in.wait(5)
    with filtered_native_stderr():  # starts inside the first, ends before it
        os.write(2, b"from the second\n")
    second_done.set()
    t.join(5)
    os.write(2, b"after both\n")
    err = capfd.readouterr().err
    assert err == "from the first\nfrom the second\nafter both\n"
