"""Docks get a native window of their own only where OpenGL is drawn by the CPU."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QDockWidget, QLabel, QWidget

from napari_medai._qt import software_gl


def test_the_renderer_is_read_from_a_real_context(qapp):
    assert software_gl.opengl_renderer()  # Xvfb's Mesa here; a GPU's name elsewhere


@pytest.mark.parametrize(
    ("renderer", "native"),
    [
        ("llvmpipe (LLVM 15.0.6, 256 bits)", True),
        ("Google SwiftShader", True),
        ("NVIDIA GeForce RTX 4070/PCIe/SSE2", False),
        ("Apple M2", False),
    ],
)
def test_paint_apart_only_with_software_opengl(qtbot, monkeypatch, renderer, native):
    monkeypatch.setattr(software_gl, "opengl_renderer", lambda: renderer)
    dock = QDockWidget()
    holder = QWidget()
    label = QLabel("status", holder)
    dock.setWidget(holder)
    qtbot.addWidget(dock)
    software_gl.paint_apart(label)
    assert holder.testAttribute(Qt.WidgetAttribute.WA_NativeWindow) is native
