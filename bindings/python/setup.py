"""The native part of kvs for Python, built against an installed libkvs:
found with pkg-config (kvs.pc; set PKG_CONFIG_PATH for a prefix of your
own), else under KVS_PREFIX (default /usr/local)."""
import os
import shlex
import subprocess

from setuptools import Extension, setup


def libkvs():
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "kvs"], check=True,
                               capture_output=True, text=True).stdout
        args = shlex.split(flags)
    except (OSError, subprocess.CalledProcessError):
        prefix = os.environ.get("KVS_PREFIX", "/usr/local")
        args = [f"-I{prefix}/include", f"-L{prefix}/lib", "-lkvs"]
    inc = [a[2:] for a in args if a.startswith("-I")]
    lib = [a[2:] for a in args if a.startswith("-L")]
    return dict(include_dirs=inc, library_dirs=lib, runtime_library_dirs=lib, libraries=["kvs"])


native = Extension(
    "kvs._kvs",
    sources=[f"src/kvs/{f}" for f in ("_module.cpp", "_table.cpp", "_guard.cpp", "_client.cpp",
                                            "_watch.cpp")],
    extra_compile_args=["-std=c++20", "-O2"],
    language="c++",
    **libkvs(),
)

setup(ext_modules=[native])
