"""Build cacheme._core, the C engine of cacheme.

The C libraries come from the system and are found with pkg-config:
hiredis (libhiredis-dev), msgpack-c (libmsgpack-dev), zlib (zlib1g-dev).
Switches (environment variables):
  CACHEME_DEBUG=1     asserts on, -O0 -g
  CACHEME_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
  CACHEME_WERROR=1    warnings are errors (CI)
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

# (pkg-config names to try, Debian package that provides it)
REQUIRED = [
    (("hiredis",), "libhiredis-dev"),
    (("msgpack-c", "msgpack"), "libmsgpack-dev"),
    (("zlib",), "zlib1g-dev"),
]


def _flag(name):
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def _pkg_config(names, package):
    if shutil.which("pkg-config") is None:
        sys.exit("cacheme: pkg-config is required to build (Debian: apt-get install pkg-config)")
    for name in names:
        if subprocess.call(["pkg-config", "--exists", name]) == 0:
            cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True).split()
            libs = subprocess.check_output(["pkg-config", "--libs", name], text=True).split()
            return cflags, libs
    sys.exit(
        f"cacheme: the C library {names[0]} was not found by pkg-config; "
        f"install it (Debian: apt-get install {package})"
    )


def extension():
    cflags = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
              "-fvisibility=hidden"]
    ldflags = []
    for names, package in REQUIRED:
        c, l = _pkg_config(names, package)
        cflags += c
        ldflags += l
    macros = []
    if _flag("CACHEME_DEBUG"):
        cflags += ["-O0", "-g3", "-UNDEBUG"]
        macros.append(("CM_DEBUG", "1"))
    else:
        cflags += ["-O2"]
    if _flag("CACHEME_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        cflags += san + ["-g", "-UNDEBUG"]
        ldflags += san
    if _flag("CACHEME_WERROR"):
        cflags.append("-Werror")
    sources = sorted(glob.glob("csrc/*.c"))
    return Extension(
        "cacheme._core",
        sources=sources,
        depends=sorted(glob.glob("csrc/*.h")),
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )


setup(ext_modules=[extension()])
