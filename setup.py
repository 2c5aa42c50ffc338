"""Build cacheme._core, the C engine of cacheme.

The C libraries come from the system and are found with pkg-config:
hiredis (libhiredis-dev), msgpack-c (libmsgpack-dev), zlib (zlib1g-dev),
OpenSSL (libssl-dev).
Switches (environment variables):
  CACHEME_DEBUG=1     asserts on, -O0 -g
  CACHEME_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
  CACHEME_WERROR=1    warnings are errors (CI)
  CACHEME_NO_PRIVATE=1  no private CPython API even where a version gate allows
                      it: the public fallbacks (csrc/compat.h), for tests
  CACHEME_NO_PQ=1, CACHEME_NO_MARIADB=1, CACHEME_NO_SQLITE=1, CACHEME_NO_BSON=1
                      build without that client library even if found
Optional (SQL and MongoDB storages, found with pkg-config when installed): libpq
(libpq-dev), MariaDB Connector/C (libmariadb-dev), sqlite3 (libsqlite3-dev),
libbson (libbson-dev: BSON for the MongoDB storage).
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
    (("openssl",), "libssl-dev"),
]


# (pkg-config names, Debian package, define): SQL storages; the build goes on
# without them, and using such a storage then raises an error naming the package.
OPTIONAL = [
    (("libpq",), "libpq-dev", "CM_HAVE_PQ"),
    (("libmariadb", "mariadb"), "libmariadb-dev", "CM_HAVE_MARIADB"),
    (("sqlite3",), "libsqlite3-dev", "CM_HAVE_SQLITE"),
    (("libbson-1.0",), "libbson-dev", "CM_HAVE_BSON"),
]


def _optional(names):
    if shutil.which("pkg-config") is None:
        return None
    for name in names:
        if subprocess.call(["pkg-config", "--exists", name]) == 0:
            cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True).split()
            libs = subprocess.check_output(["pkg-config", "--libs", name], text=True).split()
            return cflags, libs
    return None


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


def _check_hiredis():
    """hiredis 0.14 and 1.x are supported (redis.c fills either's reply
    function table); older readers lack what the RESP client relies on."""
    version = subprocess.check_output(["pkg-config", "--modversion", "hiredis"], text=True).strip()
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor < (0, 14):
        sys.exit(f"cacheme: hiredis {version} is too old; 0.14 or later is needed "
                 f"(Debian: apt-get install libhiredis-dev)")


def extension():
    cflags = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
              "-fvisibility=hidden"]
    if sys.platform.startswith("linux"):
        # calls into libpython through the GOT, not a PLT stub: one jump fewer
        # on every call the hit path makes (ELF only)
        cflags.append("-fno-plt")
    ldflags = []
    for names, package in REQUIRED:
        c, l = _pkg_config(names, package)
        cflags += c
        ldflags += l
    _check_hiredis()
    macros = []
    for names, package, define in OPTIONAL:
        found = None if _flag("CACHEME_NO_" + define[8:]) else _optional(names)
        if found is None:
            print(f"cacheme: {names[0]} not found; its storage is disabled "
                  f"(Debian: apt-get install {package})", file=sys.stderr)
            continue
        cflags += found[0]
        ldflags += found[1]
        macros.append((define, "1"))
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
    if _flag("CACHEME_NO_PRIVATE"):
        macros.append(("CM_NO_PRIVATE", "1"))
    if _flag("CACHEME_WERROR"):
        cflags.append("-Werror")
    sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
    return Extension(
        "cacheme._core",
        sources=sources,
        depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )


setup(ext_modules=[extension()])
