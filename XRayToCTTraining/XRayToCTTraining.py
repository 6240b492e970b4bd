"""XRayToCT Training: the headless companion of the XRayToCT module.

Training, evaluation and data preparation are long batch jobs, so they run from a command
line. Three ways to run them take exactly the same arguments, because they share one
argument parser (``XRayToCTLib.cli.build_parser``)::

    Slicer --no-main-window --python-script XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
    python XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
    xraytoct <subcommand> [args...]

If Slicer itself takes an option meant for the subcommand (``--help``), put ``--`` before the
subcommand: ``... XRayToCTTraining.py -- <subcommand> --help``.

In plain Python this file defines only :class:`XRayToCTTrainingLogic` and :func:`main`;
the module, widget and test classes need Slicer's GUI layer (``qt`` and
``slicer.ScriptedLoadableModule``), which the MRML-only ``slicer-core`` wheel does not have.
"""
import os
import shlex
import sys
import traceback

try:
    import ctk
    import qt

    import slicer
    from slicer.i18n import tr as _
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
except ImportError:  # plain Python (possibly with the MRML-only slicer-core wheel)
    slicer = None
    ScriptedLoadableModuleLogic = object

    def _(text):
        return text

#: True inside 3D Slicer, where the module, widget and test classes are defined.
IN_SLICER = slicer is not None

USAGE = """\
XRayToCT Training runs from a command line; these three take the same arguments:

  Slicer --no-main-window --python-script XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
  python XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
  xraytoct <subcommand> [args...]

From Slicer's Python console:

  import XRayToCTTraining
  XRayToCTTraining.XRayToCTTrainingLogic().run(["<subcommand>", "--help"])

"Open command help" lists the subcommands and their arguments.
"""


def _ensureLibraryImportable() -> None:
    """Make ``XRayToCTLib`` importable: it sits beside this file in an installed extension,
    and in ``../XRayToCT`` in the source tree."""
    try:
        import XRayToCTLib  # noqa: F401
        return
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.join(here, os.pardir, "XRayToCT")):
        candidate = os.path.normpath(candidate)
        if os.path.isfile(os.path.join(candidate, "XRayToCTLib", "__init__.py")):
            sys.path.insert(0, candidate)
            return
    raise ImportError("XRayToCTLib not found: install the XRayToCT extension, or run this file "
                      "from the XRayToCT source tree")


def _exitStatus(status) -> int:
    """An integer exit status from what ``main`` returned or ``SystemExit`` carried."""
    if status is None:
        return 0
    if isinstance(status, bool):
        return int(status)
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)  # sys.exit("message") semantics
    return 1


#
# XRayToCTTrainingLogic
#


class XRayToCTTrainingLogic(ScriptedLoadableModuleLogic):
    """Runs the ``xraytoct`` command's subcommands in this process (no GUI needed)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def _cli():
        _ensureLibraryImportable()
        from XRayToCTLib import cli

        return cli

    def run(self, argv) -> int:
        """Run ``xraytoct <argv...>``; returns its exit status (argument errors give 2).

        ``argv`` is a list of strings (a single string is split like a shell would)."""
        if isinstance(argv, str):
            argv = shlex.split(argv)
        argv = [str(a) for a in argv]
        cli = self._cli()
        try:
            status = cli.main(argv)
        except SystemExit as e:  # argparse exits on --help and on bad arguments
            status = e.code
        return _exitStatus(status)

    def commandHelp(self) -> str:
        """The ``xraytoct --help`` text (subcommands and common options)."""
        return self._cli().build_parser().format_help()

    @staticmethod
    def usage() -> str:
        return USAGE


def main(argv=None) -> int:
    """Entry point of ``python XRayToCTTraining.py`` and ``Slicer --python-script``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    try:
        return XRayToCTTrainingLogic().run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        # A batch run must end with a status (Slicer without a main window would otherwise stay open).
        traceback.print_exc()
        return 1


if IN_SLICER:

    #
    # XRayToCTTraining
    #

    class XRayToCTTraining(ScriptedLoadableModule):
        """Uses ScriptedLoadableModule base class, available at:
        https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
        """

        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = _("XRayToCT Training")
            self.parent.categories = ["Reconstruction"]
            self.parent.dependencies = []
            self.parent.contributors = ["XRayToCT developers"]
            self.parent.hidden = False
            self.parent.helpText = _("""
Training, evaluation and data preparation for XRayToCT's synthetic CT models. They are long
batch jobs and run from a command line (<code>Slicer --no-main-window --python-script
XRayToCTTraining.py &lt;subcommand&gt; ...</code>, or the <code>xraytoct</code> command), with the
same arguments everywhere. This panel shows how to run them.
<p><b>Research use only.</b> A synthetic CT is not for diagnosis or treatment.</p>
""")
            self.parent.acknowledgementText = _("""
See the XRayToCT module for the methods this project reimplements. The module follows the
3D Slicer scripted module template by Jean-Christophe Fillion-Robin (Kitware), Andras Lasso
(PerkLab) and Steve Pieper (Isomics).
""")

    #
    # XRayToCTTrainingWidget
    #

    class XRayToCTTrainingWidget(ScriptedLoadableModuleWidget):
        """A minimal panel: how to run the command, and its help text."""

        def setup(self) -> None:
            ScriptedLoadableModuleWidget.setup(self)
            self.logic = XRayToCTTrainingLogic()

            commandCollapsibleButton = ctk.ctkCollapsibleButton()
            commandCollapsibleButton.text = _("Command line")
            self.layout.addWidget(commandCollapsibleButton)
            commandLayout = qt.QVBoxLayout(commandCollapsibleButton)

            self.helpButton = qt.QPushButton(_("Open command help"))
            self.helpButton.toolTip = _("Show the subcommands of xraytoct and their arguments")
            commandLayout.addWidget(self.helpButton)

            self.helpTextEdit = qt.QPlainTextEdit()
            self.helpTextEdit.readOnly = True
            self.helpTextEdit.lineWrapMode = qt.QPlainTextEdit.NoWrap
            font = qt.QFontDatabase.systemFont(qt.QFontDatabase.FixedFont)
            self.helpTextEdit.setFont(font)
            self.helpTextEdit.setPlainText(self.logic.usage())
            self.helpTextEdit.setMinimumHeight(240)
            commandLayout.addWidget(self.helpTextEdit)

            self.helpButton.connect("clicked(bool)", self.onHelpButton)
            self.layout.addStretch(1)

        def onHelpButton(self) -> None:
            with slicer.util.tryWithErrorDisplay(_("Failed to get the command help."), waitCursor=True):
                self.helpTextEdit.setPlainText(self.logic.usage() + "\n" + self.logic.commandHelp())

    #
    # XRayToCTTrainingTest
    #

    class XRayToCTTrainingTest(ScriptedLoadableModuleTest):
        """Uses ScriptedLoadableModuleTest base class, available at:
        https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
        """

        def setUp(self):
            slicer.mrmlScene.Clear()

        def runTest(self):
            self.setUp()
            self.test_CommandHelp()

        def test_CommandHelp(self):
            """The shared parser answers --help with status 0, and a bad subcommand with 2."""
            self.delayDisplay("Starting the test")
            logic = XRayToCTTrainingLogic()
            self.assertIn("usage", logic.commandHelp().lower())
            self.assertEqual(logic.run(["--help"]), 0)
            self.assertEqual(logic.run(["no-such-subcommand"]), 2)
            self.delayDisplay("Test passed")


if __name__ == "__main__":
    exitStatus = main(sys.argv[1:])
    if slicer is not None and getattr(slicer, "app", None) is not None:
        slicer.util.exit(exitStatus)
    else:
        sys.exit(exitStatus)
