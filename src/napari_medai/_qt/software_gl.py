"""Software OpenGL: detect it, and keep docks' repaints cheap where it draws napari."""

from __future__ import annotations

from functools import cache

from qtpy.QtCore import Qt
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import QDockWidget, QWidget

#: Words in GL_RENDERER that mark OpenGL drawn by the CPU (Mesa's llvmpipe on Xvfb
#: and remote desktops, Google's SwiftShader, Microsoft's GDI renderer).
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software", "swiftshader", "gdi generic")


@cache
def opengl_renderer() -> str:
    """GL_RENDERER of a context like napari's ("" when none can be made)."""
    from vispy.gloo import gl

    surface = QOffscreenSurface()
    surface.create()
    context = QOpenGLContext()
    if not (context.create() and context.makeCurrent(surface)):
        return ""
    try:
        return str(gl.glGetParameter(gl.GL_RENDERER))
    finally:
        context.doneCurrent()


def software_opengl() -> bool:
    """Whether OpenGL is drawn by the CPU, where composing napari's window is slow."""
    renderer = opengl_renderer().lower()
    return any(word in renderer for word in SOFTWARE_RENDERERS)


def paint_apart(widget: QWidget) -> None:
    """With software OpenGL, give the dock that holds ``widget`` a native window of its own.

    Qt 5 repaints a window holding a QOpenGLWidget (napari's canvas) by
    composing all of it through OpenGL, so a progress line or plot update in
    a dock costs a whole-window composition: ~36 ms per repaint at
    1600x1000 on software OpenGL (Xvfb, remote desktops), against ~2 ms
    once the dock paints into a native window of its own (measured with
    ``processEvents`` after ``setText``). On a GPU the composition is cheap,
    and native child windows are fragile (macOS, Wayland, floating docks), so
    there, and outside a dock, this does nothing.
    """
    if not software_opengl():
        return
    child = widget
    while child.parentWidget() is not None and not isinstance(child.parentWidget(), QDockWidget):
        child = child.parentWidget()
    if child.parentWidget() is not None:
        child.setAttribute(Qt.WidgetAttribute.WA_NativeWindow)
