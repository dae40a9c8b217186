"""The wheel's platform tag; everything else is in pyproject.toml.

The package has no Python extension module, only liblsync.so, which
setuptools would take for data and ship in a pure `py3-none-any` wheel. The
.so is x86-64 Linux machine code that needs glibc, so the wheel is tagged
`py3-none-manylinux_2_34_x86_64`: any Python 3 (the .so is no CPython
module, so no ABI tag), on x86-64 Linux with glibc 2.34 or newer.

2.34 is the newest glibc symbol version the release build links against
(`objdump -T liblsync.so`: dlsym and pthread_key_create are GLIBC_2.34, as
glibc 2.34 moved libpthread into libc), so an older tag such as
manylinux_2_17 would claim machines that cannot load it.
tests/python/test_wheel.py checks this tag against the .so in the wheel.
"""

from setuptools import Distribution, setup

try:  # setuptools >= 70.1 has its own bdist_wheel
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # older setuptools (Debian 12's 66) uses the wheel package's
    from wheel.bdist_wheel import bdist_wheel

PLATFORM = "manylinux_2_34_x86_64"


class BinaryDistribution(Distribution):
    """A distribution with machine code in it: its files go to platlib, and
    the wheel says `Root-Is-Purelib: false`."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """bdist_wheel for a platform wheel of no particular Python or ABI."""

    def get_tag(self):
        return "py3", "none", PLATFORM


setup(distclass=BinaryDistribution, cmdclass={"bdist_wheel": PlatformWheel})
