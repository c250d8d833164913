"""PEP 517 build backend behind `pip install .` at the repository root.

It configures the CMake project with QWEN35_PYTHON=ON, builds the _qwen35
extension (linked with the static library, so the wheel is self-contained)
and packs the wheel with the standard library: no setuptools, no scikit-build,
no network. Needs what the CMake build needs: cmake, a C++17 compiler,
pybind11-dev and python3-dev (ninja-build is used when present).

Settings (environment, or pip's --config-settings KEY=VALUE):
  QWEN35_CMAKE_ARGS / cmake-args   extra CMake arguments, e.g. "-DQWEN35_CUDA=OFF"
  QWEN35_BUILD_DIR  / build-dir    build directory (default: build-python/ in the repository)
  QWEN35_JOBS       / jobs         parallel build jobs (default: all cores)
"""

import base64
import io
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PKG_SRC = os.path.join(ROOT, "bindings", "python", "qwen35")
NAME = "qwen35"
SUMMARY = "Qwen3.5-4B inference (NVFP4, MTP speculative decoding, vision) with a llama-cpp-python compatible API"


def _version():
    with open(os.path.join(ROOT, "include", "qwen35", "qwen35.h"), encoding="utf-8") as f:
        m = re.search(r'#define QWEN35_VERSION_STRING "([^"]+)"', f.read())
    if not m:
        raise RuntimeError("QWEN35_VERSION_STRING not found in include/qwen35/qwen35.h")
    return m.group(1)


def _setting(config_settings, key, env):
    if config_settings and config_settings.get(key):
        return config_settings[key]
    return os.environ.get(env, "")


def _tag():
    impl = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    abi = impl + getattr(sys, "abiflags", "")
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{impl}-{abi}-{plat}"


def _metadata():
    return (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {_version()}\nSummary: {SUMMARY}\n"
            "Requires-Python: >=3.8\nLicense: see the repository\n")


def _dist_info():
    return f"{NAME}-{_version()}.dist-info"


def _build_extension(config_settings):
    build_dir = _setting(config_settings, "build-dir", "QWEN35_BUILD_DIR") or os.path.join(ROOT, "build-python")
    jobs = _setting(config_settings, "jobs", "QWEN35_JOBS") or str(os.cpu_count() or 1)
    extra = shlex.split(_setting(config_settings, "cmake-args", "QWEN35_CMAKE_ARGS"))
    cmd = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", "-DQWEN35_PYTHON=ON",
           "-DQWEN35_TESTS=OFF", f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja") and not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
        cmd += ["-G", "Ninja"]
    subprocess.run(cmd + extra, check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", build_dir, "--target", "_qwen35", "-j", jobs], check=True, stdout=sys.stderr)
    out = os.path.join(build_dir, "bindings", "python", "qwen35")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    ext = os.path.join(out, "_qwen35" + suffix)
    if not os.path.exists(ext):
        raise RuntimeError(f"the build did not produce {ext}")
    return ext


class _Wheel:
    def __init__(self, path):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.records = []

    def add(self, arcname, data):
        self.zip.writestr(arcname, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.records.append(f"{arcname},sha256={digest},{len(data)}")

    def close(self, record_name):
        self.records.append(f"{record_name},,")
        self.zip.writestr(record_name, "\n".join(self.records) + "\n")
        self.zip.close()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# ---- PEP 517 hooks ------------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = os.path.join(metadata_directory, _dist_info())
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "METADATA"), "w", encoding="utf-8") as f:
        f.write(_metadata())
    return _dist_info()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    ext = _build_extension(config_settings)
    tag = _tag()
    name = f"{NAME}-{_version()}-{tag}.whl"
    w = _Wheel(os.path.join(wheel_directory, name))
    for fn in sorted(os.listdir(PKG_SRC)):
        if fn.endswith(".py"):
            w.add(f"{NAME}/{fn}", _read(os.path.join(PKG_SRC, fn)))
    w.add(f"{NAME}/{os.path.basename(ext)}", _read(ext))
    di = _dist_info()
    w.add(f"{di}/METADATA", _metadata().encode())
    w.add(f"{di}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: qwen35_build\nRoot-Is-Purelib: false\nTag: {tag}\n").encode())
    w.add(f"{di}/top_level.txt", f"{NAME}\n".encode())
    w.close(f"{di}/RECORD")
    return name


def build_sdist(sdist_directory, config_settings=None):
    base = f"{NAME}-{_version()}"
    try:
        files = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], check=True, capture_output=True).stdout
        files = [f for f in files.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        raise RuntimeError("building an sdist needs a git checkout (git ls-files)") from None
    name = base + ".tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            if os.path.isfile(os.path.join(ROOT, f)):
                tar.add(os.path.join(ROOT, f), arcname=f"{base}/{f}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata().encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return name
