"""Build hook: compile the gettext catalogs (receiver/locale/*/LC_MESSAGES/*.po) into .mo files
inside the built package, so that an installed board needs no msgfmt. Everything else about the
package is in setup.cfg."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithCatalogs(build_py):
    def run(self) -> None:
        super().run()
        here = Path(__file__).resolve().parent
        spec = importlib.util.spec_from_file_location("_i18n", here / "receiver" / "i18n.py")
        if spec is None or spec.loader is None:
            raise RuntimeError("cannot load receiver/i18n.py to compile the catalogs")
        i18n = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(i18n)
        for po in sorted((here / "receiver" / "locale").glob("*/LC_MESSAGES/*.po")):
            relative = po.relative_to(here).with_suffix(".mo")
            i18n.compile_po(po, Path(self.build_lib) / relative)


setup(cmdclass={"build_py": BuildWithCatalogs})
