"""XRayToCT Training: the headless companion of the XRayToCT module.

Training, evaluation and data preparation are long batch jobs. Three ways to run them take
exactly the same arguments, because they share one argument parser
(``XRayToCTLib.cli.build_parser``)::

    Slicer --no-main-window --python-script XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
    python XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
    xraytoct <subcommand> [args...]

Run as a script, this file logs progress to stdout (``task:  NN% message``, one line per
percent) and exits with the command's status (0 success, 2 bad input, 1 internal error). If Slicer itself takes an option
meant for the subcommand (``--help``), put ``--`` before the subcommand:
``... XRayToCTTraining.py -- <subcommand> --help``.

In Slicer the module's panel starts a training, an evaluation or a data preparation as a
background process (the ``xraytoct`` command run by Slicer's Python, followed through its log:
:class:`XRayToCTLib.process.CommandProcess`, the one the XRayToCT module uses too), follows
its progress and opens its report; from the Python console ``XRayToCTTrainingLogic().run([...])``
runs one in-process.

In plain Python this file defines only :class:`XRayToCTTrainingLogic` and :func:`main`; the module, widget and test classes need Slicer's GUI layer (``qt`` and
``slicer.ScriptedLoadableModule``), which the MRML-only ``slicer-core`` wheel does not have.
"""
import os
import shlex
import sys
import tempfile
import traceback

try:
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

#: The subcommands the panel offers (any subcommand of ``xraytoct`` runs from the console).
PANEL_COMMANDS = ("train", "evaluate", "prepare")

USAGE = """\
XRayToCT Training runs the xraytoct subcommands (prepare, train, evaluate, ...); these three
take the same arguments:

  Slicer --no-main-window --python-script XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
  python XRayToCTTraining/XRayToCTTraining.py <subcommand> [args...]
  xraytoct <subcommand> [args...]

From Slicer's Python console:

  logic = slicer.util.getModuleLogic("XRayToCTTraining")
  logic.run(["train", "--model", "x2ct_gan", "--data", "DATASET", "--out", "RUN", "--epochs", "1"])

"Command help" lists the subcommands and their arguments.
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


def reportPath(argv):
    """Where a command's report is, from its arguments: ``report.html`` in its ``--out``
    (or ``--out-dir``) folder, or ``--out`` itself when it is an HTML file; None if unknown."""
    argv = [str(a) for a in argv]
    out = None
    for index, arg in enumerate(argv):
        for option in ("--out", "--out-dir"):
            if arg == option and index + 1 < len(argv):
                out = argv[index + 1]
            elif arg.startswith(option + "="):
                out = arg.split("=", 1)[1]
    if not out:
        return None
    if out.lower().endswith((".html", ".htm")):
        return out
    return os.path.join(out, "report.html")


#
# XRayToCTTrainingLogic
#


class XRayToCTTrainingLogic(ScriptedLoadableModuleLogic):
    """Runs the ``xraytoct`` subcommands (``prepare``, ``train``, ``evaluate``, ...) without a
    GUI: in this process (:meth:`run`, what the console and ``--python-script`` use) or in a
    background process (:meth:`start`, what the panel uses)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def _cli():
        _ensureLibraryImportable()
        from XRayToCTLib import cli

        return cli

    def run(self, argv, logProgress: bool = True) -> int:
        """Run ``xraytoct <argv...>`` in this process; returns its exit status (argument
        errors give 2). With ``logProgress`` the progress goes to stdout as lines
        ``[task]  NN% message`` (instead of a terminal progress bar).

        ``argv`` is a list of strings (a single string is split like a shell would)."""
        if isinstance(argv, str):
            argv = shlex.split(argv)
        argv = [str(a) for a in argv]
        cli = self._cli()
        original = getattr(cli, "_tqdm_progress", None)
        if logProgress and original is not None:
            cli._tqdm_progress = lambda desc: (cli._line_progress(desc, step=0.01, stream=sys.stdout), lambda: None)
        try:
            status = cli.main(argv)
        except SystemExit as e:  # argparse exits on --help and on bad arguments
            status = e.code
        finally:
            if logProgress and original is not None:
                cli._tqdm_progress = original
        return _exitStatus(status)

    def start(self, argv, log: str = None):
        """Start ``xraytoct <argv...>`` in a background process; returns the
        :class:`XRayToCTLib.process.CommandProcess` to follow (``fraction``, ``message``,
        ``new_lines()``, ``done``, ``returncode``) or ``cancel()``. Its output goes to ``log``
        (default: ``xraytoct.log`` in a new temporary folder)."""
        if isinstance(argv, str):
            argv = shlex.split(argv)
        if not argv:
            raise ValueError(_("Choose a command (train, evaluate, prepare, ...)."))
        _ensureLibraryImportable()
        from XRayToCTLib.process import LOG_NAME, CommandProcess

        return CommandProcess(argv, log or os.path.join(tempfile.mkdtemp(prefix="xraytoct-"), LOG_NAME))

    def commandHelp(self, command: str = None) -> str:
        """The ``xraytoct --help`` text, or a subcommand's ``--help``."""
        parser = self._cli().build_parser()
        if not command:
            return parser.format_help()
        for action in parser._subparsers._group_actions:  # argparse keeps subparsers here
            if command in getattr(action, "choices", {}):
                return action.choices[command].format_help()
        raise ValueError(_("Unknown command: {command}").format(command=command))

    @staticmethod
    def reportPath(argv):
        """Where the report of a command with these arguments is (see :func:`reportPath`)."""
        return reportPath(shlex.split(argv) if isinstance(argv, str) else argv)

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
            self.parent.categories = ["Tomographic Reconstruction"]
            self.parent.dependencies = []
            self.parent.contributors = ["XRayToCT developers"]
            self.parent.hidden = False
            self.parent.helpText = _("""
Training, evaluation and data preparation for XRayToCT's synthetic CT models. The panel starts
one as a background process, shows its progress and log, and opens its report. The same
commands run without the GUI (<code>Slicer --no-main-window --python-script
XRayToCTTraining.py &lt;subcommand&gt; ...</code>, or the <code>xraytoct</code> command), with the
same arguments everywhere.
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
        """A minimal panel: command and arguments, Start / Cancel, progress, log, report."""

        def setup(self) -> None:
            ScriptedLoadableModuleWidget.setup(self)
            uiWidget = slicer.util.loadUI(self.resourcePath("UI/XRayToCTTraining.ui"))
            self.layout.addWidget(uiWidget)
            self.ui = slicer.util.childWidgetVariables(uiWidget)
            self.logic = XRayToCTTrainingLogic()
            self.process = None
            self._lastArgv = []

            for command in PANEL_COMMANDS:
                self.ui.commandComboBox.addItem(command)
            self.ui.logTextEdit.setPlainText(self.logic.usage())
            self.ui.progressBar.value = 0
            self.ui.cancelButton.enabled = False
            self.ui.openReportButton.enabled = False

            self.timer = qt.QTimer()
            self.timer.setInterval(250)
            self.timer.connect("timeout()", self.onPoll)
            self.ui.startButton.connect("clicked(bool)", self.onStartButton)
            self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
            self.ui.openReportButton.connect("clicked(bool)", self.onOpenReportButton)
            self.ui.helpButton.connect("clicked(bool)", self.onHelpButton)

        def cleanup(self) -> None:
            if self.process is not None:
                self.process.cancel()
            self.timer.stop()

        def _argv(self) -> list:
            return [self.ui.commandComboBox.currentText, *shlex.split(self.ui.argumentsLineEdit.text)]

        def onStartButton(self) -> None:
            with slicer.util.tryWithErrorDisplay(_("Failed to start the command."), waitCursor=True):
                argv = self._argv()
                self.process = self.logic.start(argv)
                self._lastArgv = argv
                self.ui.logTextEdit.setPlainText("$ xraytoct " + shlex.join(argv))
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = _("Running...")
                self.ui.startButton.enabled = False
                self.ui.cancelButton.enabled = True
                self.ui.openReportButton.enabled = False
                self.timer.start()

        def onPoll(self) -> None:
            process = self.process
            if process is None:
                self.timer.stop()
                return
            for line in process.new_lines():
                self.ui.logTextEdit.appendPlainText(line)
            self.ui.progressBar.value = int(round(100 * process.fraction))
            if process.message:
                self.ui.statusLabel.text = process.message
            if not process.done:
                return
            self.timer.stop()
            self.process = None
            for line in process.new_lines():
                self.ui.logTextEdit.appendPlainText(line)
            status = process.returncode
            self.ui.startButton.enabled = True
            self.ui.cancelButton.enabled = False
            report = self.logic.reportPath(self._lastArgv)
            self.ui.openReportButton.enabled = bool(report and os.path.isfile(report))
            self.ui.statusLabel.text = (_("Finished.") if status == 0 else
                                        _("Stopped with status {status}: the log above says why.").format(status=status))

        def onCancelButton(self) -> None:
            if self.process is not None:
                self.process.cancel()
                self.ui.statusLabel.text = _("Cancelled.")

        def onOpenReportButton(self) -> None:
            report = self.logic.reportPath(self._lastArgv)
            with slicer.util.tryWithErrorDisplay(_("Failed to open the report."), waitCursor=False):
                if not report or not os.path.isfile(report):
                    raise FileNotFoundError(_("No report at {path}").format(path=report))
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(report))

        def onHelpButton(self) -> None:
            with slicer.util.tryWithErrorDisplay(_("Failed to get the command help."), waitCursor=True):
                self.ui.logTextEdit.setPlainText(self.logic.usage() + "\n"
                                                 + self.logic.commandHelp(self.ui.commandComboBox.currentText))

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
            self.test_BackgroundProcess()

        def test_CommandHelp(self):
            """The shared parser answers --help with status 0, and a bad subcommand with 2."""
            self.delayDisplay("Starting the test")
            logic = XRayToCTTrainingLogic()
            self.assertIn("usage", logic.commandHelp().lower())
            self.assertIn("--out", logic.commandHelp("train"))
            self.assertEqual(logic.run(["--help"]), 0)
            self.assertEqual(logic.run(["no-such-subcommand"]), 2)
            self.delayDisplay("Test passed")

        def test_BackgroundProcess(self):
            """A command in a background process: its output is collected and its status kept;
            a bad command ends with status 2 and says why."""
            logic = XRayToCTTrainingLogic()
            process = logic.start(["--version"])
            self.assertEqual(process.wait(120), 0)
            self.assertIn("xraytoct", process.output)
            process = logic.start(["train", "--no-such-option"])
            self.assertEqual(process.wait(120), 2)
            self.assertIn("error", process.output)
            self.delayDisplay("Test passed")


if __name__ == "__main__":
    exitStatus = main(sys.argv[1:])
    if slicer is not None and getattr(slicer, "app", None) is not None:
        slicer.util.exit(exitStatus)
    else:
        sys.exit(exitStatus)
