"""The wheel build hook: translate the build into one call of the shared install code.

All decisions (settings, probe, selection, fetch, report) live in
:mod:`llama_runtime.install`, which is unit-tested without running a build.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class LlamaRuntimeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        sys.path.insert(0, self.root)  # the llama_runtime being built, not an installed one
        try:
            from hatch_llama.backend import config_settings
            from llama_runtime.errors import LlamaRuntimeError
            from llama_runtime.install import prepare_wheel
        finally:
            sys.path.remove(self.root)
        try:
            plan = prepare_wheel(root=Path(self.root), config_settings=config_settings(),
                                 staging=Path(self.directory) / ".llama-runtime-staging",
                                 editable=version == "editable", echo=self.app.display_info)
        except LlamaRuntimeError as exc:
            # the user's mistake or the network's: one paragraph, not a traceback through
            # hatchling and the frontend's hook runner (which all print stderr as is)
            sys.stderr.write(f"\nllama-runtime: error: {exc}\n\n")
            raise SystemExit(1) from None
        key = "force_include_editable" if version == "editable" else "force_include"
        build_data[key].update(plan.force_include)
        build_data["dependencies"].extend(plan.dependencies)
        build_data["pure_python"] = plan.tag is None
        if plan.tag is not None:
            build_data["tag"] = plan.tag
