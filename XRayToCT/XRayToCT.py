"""XRayToCT: synthetic head CT from two radiographs (AP + lateral), a 3D Slicer module.

This file holds UI wiring only. Every action is one call into :class:`XRayToCTLogic`, which
works without the GUI (Python console, ``--python-script``); the logic does its MRML work
through ``XRayToCTLib.mrml`` and its computing through the Qt-free library ``XRayToCTLib``
beside this file. The torch-dependent parts of the library are imported inside methods, so
the module loads before PyTorch is installed.

Long work (DRRs, reconstruction, comparison) runs in a separate process, the ``xraytoct``
command (``XRayToCTLib.process``): Slicer's main thread holds Python's GIL while idle, so a
Python thread would crawl. The logic also keeps blocking forms for the console.

Outside 3D Slicer (no ``qt``, no ``slicer.ScriptedLoadableModule``) importing this file
raises one ImportError that says so, and does nothing else. In a Slicer whose Python is
older than the library needs (Slicer 5.8 bundles Python 3.9) it raises one ImportError that
names the Slicer versions it supports.
"""
import importlib
import importlib.util
import json
import logging
import os
import platform
import sys
import time
from types import SimpleNamespace
from typing import Annotated, Any, Callable, Optional

try:
    import qt
    import vtk

    import slicer
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin
except ImportError as _importError:
    raise ImportError(
        "XRayToCT.py is a 3D Slicer module and runs inside 3D Slicer "
        f"({_importError}). In plain Python use the library (import XRayToCTLib) or the "
        "'xraytoct' command; for batch runs use XRayToCTTraining/XRayToCTTraining.py.") from _importError

#: The Slicer releases the module supports, and the Python they bundle (Slicer 5.8 bundles
#: Python 3.9.10, which the library does not run on; 5.10 and later bundle 3.12).
SUPPORTED_SLICER = "5.10"
MINIMUM_PYTHON = (3, 10)
if sys.version_info < MINIMUM_PYTHON:
    raise ImportError(
        f"XRayToCT needs 3D Slicer {SUPPORTED_SLICER} or later (Python "
        f"{'.'.join(map(str, MINIMUM_PYTHON))} or later); this Slicer runs Python "
        f"{platform.python_version()}. Install a current 3D Slicer from https://download.slicer.org.")

from XRayToCTLib import mrml, mrml_tasks
from XRayToCTLib.constants import TEMPLATE_ENV
from XRayToCTLib.errors import Cancelled, TemplateUnavailable, XRayToCTError

#: Where PyTorch computes: ``auto`` is a CUDA GPU when PyTorch sees one, else the CPU.
DEVICES = ("auto", "cuda", "cpu")

#: The PyTorch versions the library works with.
TORCH_VERSION_REQUIREMENT = ">=2.2"

#: Python packages the library needs, by import name, with the pip requirement to install.
REQUIREMENTS = {
    "torch": "torch" + TORCH_VERSION_REQUIREMENT,
    "SimpleITK": "SimpleITK>=2.3",
    "pydicom": "pydicom>=2.4",
    "tqdm": "tqdm>=4.60",
    "monai": "monai>=1.4",
    "scipy": "scipy>=1.10",
    "safetensors": "safetensors>=0.4",
    "yaml": "PyYAML>=6",
    "PIL": "Pillow>=9",
}

# Node attributes (the definitions live in XRayToCTLib.mrml)
ATTRIBUTE_VIEW = mrml.ATTRIBUTE_VIEW
ATTRIBUTE_GEOMETRY = mrml.ATTRIBUTE_GEOMETRY
ATTRIBUTE_KIND = mrml.ATTRIBUTE_KIND
ATTRIBUTE_SOURCE = mrml.ATTRIBUTE_SOURCE
ATTRIBUTE_METADATA = mrml.ATTRIBUTE_METADATA
ATTRIBUTE_CONSISTENCY = mrml.ATTRIBUTE_CONSISTENCY

VIEW_LABELS = {"ap": "AP", "lateral": "lateral"}

#: Name of the sample data set registered with the Sample Data module.
SAMPLE_NAME = "XRayToCT phantom"

#: The sample CT that ships with the module (a generated phantom head, so no download and
#: no PyTorch are needed to load it): ``xraytoct phantom --size 128 --spacing 2 --seed 0``
#: stored as int16 HU. Its node's name:
SAMPLE_FILE = "Resources/SampleData/XRayToCTPhantomCT.nrrd"
SAMPLE_NODE_NAME = "XRayToCT phantom CT"

#: How often (ms) the panel looks at a background reconstruction.
POLL_INTERVAL_MS = 200


#
# XRayToCT
#


class XRayToCT(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XRayToCT")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Tomographic Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = ["XRayToCT developers"]
        self.parent.helpText = _("""
Synthetic CT (sCT) of the head from two radiographs: an anteroposterior (AP) and a lateral
view go in (or one, for single-view models), a 3D CT-like volume comes out, computed by a deep
learning model.
<p><b>Inputs</b>: two radiographs loaded with Add Data or the DICOM module, or a head CT: the
module then renders its digitally reconstructed radiographs (DRRs) at the model's geometry.
<b>Apply</b> runs the model in the background (Cancel stops it). The sCT is placed in patient
space (on the CT's grid when a CT was the input); its projection-consistency score (how well
its own DRRs match the inputs) is shown and stored with it. <b>Compare</b> shows the sCT and a
ground-truth CT side by side in linked axial, sagittal and coronal views, with a difference map
and a table of SSIM, PSNR, cosine similarity and mean absolute error.</p>
<p>Try it: Sample Data, "XRayToCT phantom" (a generated phantom head that ships with the module).</p>
<p>Supported: 3D Slicer 5.10 or later.</p>
<p><b>Research use only.</b> The sCT is synthetic: it is computed from radiographs, it is not
a measurement of the patient, and it must not be used for diagnosis or treatment.</p>
<p>See the <a href="https://github.com/xraytoct/SlicerXRayToCT">project page</a>.</p>
""")
        self.parent.acknowledgementText = _("""
XRayToCT reimplements, in the open, methods published for synthetic CT from radiographs:
the feasibility study of cranial sCT from biplanar radiographs of neurosurgical patients
with 2D-to-3D generative adversarial networks, the comparison of a GAN (X2CT-GAN design)
with a CNN and implicit neural representation (CNN-INR) on the same cranial data, X2CT-GAN
(Ying et al., CVPR 2019), and related work on diffusion (Diff2CT) and single-view (S-XR2CT)
reconstruction. Reference DRRs are rendered with Plastimatch. The module follows the
3D Slicer scripted module template by Jean-Christophe Fillion-Robin (Kitware), Andras Lasso
(PerkLab) and Steve Pieper (Isomics).
""")
        # The sample data set is registered once the application has started (SampleData
        # must be loaded first); nothing is generated until a user asks for it.
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", registerSampleData)


def sampleDataSource() -> dict:
    """The arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for "XRayToCT
    phantom": the CT that ships with the module, as a ``file:`` URI with its SHA-256, so that
    the Sample Data button and ``SampleData.downloadSample("XRayToCT phantom")`` load it like
    any sample (copied to the cache, checked, loaded and shown). No PyTorch is needed; the
    module's *Synthesize DRRs* renders its radiographs."""
    import hashlib
    import pathlib

    path = pathlib.Path(_modulePath(SAMPLE_FILE))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(category="XRayToCT", sampleName=SAMPLE_NAME, uris=[path.as_uri()],
                fileNames=[path.name], nodeNames=[SAMPLE_NODE_NAME], checksums=[f"SHA256:{digest}"],
                loadFileType="VolumeFile", thumbnailFileName=_modulePath("Resources/Icons/XRayToCT.png"))


def registerSampleData() -> None:
    """Register "XRayToCT phantom" with the Sample Data module (see :func:`sampleDataSource`)."""
    try:
        import SampleData
    except ImportError:
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sampleDataSource())


def _modulePath(relative: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), relative)


#
# XRayToCTParameterNode
#


@parameterNodeWrapper
class XRayToCTParameterNode:
    """The module's state, saved with the scene.

    ctVolume - a head CT in HU: source of DRRs, default ground truth of the comparison.
    apVolume - the anteroposterior radiograph (X-ray or DRR).
    lateralVolume - the lateral radiograph (X-ray or DRR).
    modelName - catalog name or path of the model package (the panel's model list sets it).
    device - where PyTorch computes: auto, cuda or cpu.
    harmonizerName - catalog name or path of the harmoniser (a 2D translation model that turns
        a real-like radiograph into the DRR domain the models were trained on).
    harmonizeAp, harmonizeLateral - which input views Harmonize translates.
    outputVolume - the synthetic CT (created by Apply when empty).
    refine - fit the sCT to its radiographs after the model (test-time fitting).
    samples - samples of a diffusion model (from 2: their mean is the sCT and their voxel
        spread the uncertainty map); other models take 1.
    uncertaintyVolume - the sCT's uncertainty map (HU), when samples >= 2.
    groundTruthVolume - the CT the sCT is compared with.
    differenceVolume - sCT minus ground truth, HU (created by Compare).
    metricsTable - the comparison's metrics (created by Compare).
    differenceOpacity - opacity of the difference overlay in the compare views.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    apVolume: vtkMRMLScalarVolumeNode
    lateralVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    harmonizerName: str = ""
    harmonizeAp: bool = True
    harmonizeLateral: bool = True
    outputVolume: vtkMRMLScalarVolumeNode
    refine: bool = False
    samples: Annotated[int, WithinRange(1, 64)] = 1
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    groundTruthVolume: vtkMRMLScalarVolumeNode
    differenceVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode
    differenceOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# XRayToCTWidget
#


class XRayToCTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._onTaskDone = None
        self._timer = None
        self._catalog = []

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XRayToCT.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. In Qt Designer the top-level qMRMLWidget's
        # "mrmlSceneChanged(vtkMRMLScene*)" signal is connected to each MRML widget's
        # "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        # The logic implements every action, so that it can run without the GUI.
        self.logic = XRayToCTLogic()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons and the model list
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)
        self.ui.synthesizeDrrsButton.connect("clicked(bool)", self.onSynthesizeDrrsButton)
        self.ui.simulateButton.connect("clicked(bool)", self.onSimulateButton)
        self.ui.harmonizeButton.connect("clicked(bool)", self.onHarmonizeButton)
        self.ui.harmonizerComboBox.connect("currentIndexChanged(int)", self.onHarmonizerSelected)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.loadModelFileButton.connect("clicked(bool)", self.onLoadModelFileButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.differenceOpacitySlider.connect("valueChanged(double)", self.onOpacityChanged)

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollTask)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self._updateDependencies()

    def _updateDependencies(self) -> None:
        """Show the install control while packages are missing; list the models and the
        device once they are there."""
        missing = self.logic.missingDependencies()
        self.ui.dependenciesGroupBox.visible = bool(missing)
        self.ui.dependenciesLabel.text = _(
            "XRayToCT needs Python packages that are not installed yet: {names}. Models, DRRs and "
            "reconstruction become available once they are.").format(names=", ".join(missing))
        self.refreshModelList()
        self.ui.gpuLabel.text = self.logic.deviceDescription()
        self._checkCanApply()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: a running task is cancelled (its process
        is killed; its result would have gone into nodes that are about to go)."""
        # Parameter node will be reset, do not use it anymore
        if self._task is not None:
            self._task.cancel()
            self.onPollTask()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())
        # Select a CT if nothing is selected yet (a volume that XRayToCT did not make)
        if not self._parameterNode.ctVolume:
            self._parameterNode.ctVolume = self.logic.firstCtVolume()

    def setParameterNode(self, inputParameterNode: Optional[XRayToCTParameterNode]) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        busy = self._task is not None
        hasCt = bool(parameters and parameters.ctVolume)
        self.ui.synthesizeDrrsButton.enabled = hasCt and not busy
        self.ui.simulateButton.enabled = hasCt and not busy
        self.ui.harmonizeButton.enabled = bool(parameters and self.logic.harmonizeProblem(parameters) is None
                                              and not busy)
        self.ui.harmonizeButton.toolTip = ((self.logic.harmonizeProblem(parameters) if parameters else "")
                                           or _("Translate the checked radiographs into the DRR domain"))
        problem = self.logic.reconstructionProblem(parameters) if parameters else _("No parameters")
        self.ui.applyButton.enabled = problem is None and not busy
        self.ui.applyButton.toolTip = problem or _("Compute the synthetic CT in the background")
        canCompare = bool(parameters and parameters.outputVolume and parameters.groundTruthVolume)
        self.ui.compareButton.enabled = canCompare and not busy
        self.ui.compareButton.toolTip = (_("Show the sCT and the ground truth in linked views, with the "
                                           "difference map and the metrics")
                                         if canCompare else _("Select a synthetic CT and a ground-truth CT"))
        if parameters and parameters.outputVolume:
            self.ui.consistencyLabel.text = self.logic.consistencySummary(parameters.outputVolume)

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    # -- models ------------------------------------------------------------------------------
    def refreshModelList(self) -> None:
        """Fill the model list from the catalog (asks nothing; shows why when it cannot)."""
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        self._catalog = []
        try:
            self._catalog = self.logic.modelCatalog()
        except Exception as e:  # the catalog needs the library's packages
            logging.info(f"XRayToCT: model catalog not available: {e}")
            self.ui.modelDescriptionLabel.text = _("Models are listed once the Python packages are "
                                                   "installed (Install dependencies, above).")
        for entry in self._catalog:
            combo.addItem(entry.get("title") or entry["name"], entry["name"])
        current = self._parameterNode.modelName if self._parameterNode else ""
        if current and combo.findData(current) < 0:
            combo.addItem(self.logic.modelTitle(current), current)  # a model file loaded earlier
        combo.blockSignals(False)
        index = combo.findData(current) if current else 0
        combo.setCurrentIndex(max(index, 0))
        self.onModelSelected(combo.currentIndex)
        self._refreshHarmonizerList()

    def _refreshHarmonizerList(self) -> None:
        """Fill the harmoniser list (catalog models of the 2D translation kind)."""
        combo = self.ui.harmonizerComboBox
        combo.blockSignals(True)
        combo.clear()
        try:
            harmonizers = self.logic.harmonizerCatalog()
        except Exception as e:  # the catalog needs the library's packages
            logging.info(f"XRayToCT: harmoniser catalog not available: {e}")
            harmonizers = []
        for entry in harmonizers:
            combo.addItem(entry.get("title") or entry["name"], entry["name"])
        combo.blockSignals(False)
        current = self._parameterNode.harmonizerName if self._parameterNode else ""
        index = combo.findData(current) if current else 0
        combo.setCurrentIndex(max(index, 0) if harmonizers else -1)
        self.onHarmonizerSelected(combo.currentIndex)

    def onHarmonizerSelected(self, index: int) -> None:
        if not self._parameterNode:
            return
        self._parameterNode.harmonizerName = (self.ui.harmonizerComboBox.itemData(index) or "") if index >= 0 else ""
        self._checkCanApply()

    def onModelSelected(self, index: int) -> None:
        if index < 0 or not self._parameterNode:
            return
        name = self.ui.modelComboBox.itemData(index)
        self._parameterNode.modelName = name or ""
        entry = next((e for e in self._catalog if e.get("name") == name), None)
        self.ui.modelDescriptionLabel.text = self.logic.modelDescription(entry or name)
        self._checkCanApply()

    def onLoadModelFileButton(self) -> None:
        if not self._ensureDependencies(_("Loading a model")):
            return
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Load an XRayToCT model package"),
                                              "", _("Model packages (*.safetensors);;All files (*)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("This file is not a usable XRayToCT model."), waitCursor=True):
            self.logic.checkModelFile(path)
            combo = self.ui.modelComboBox
            if combo.findData(path) < 0:
                combo.addItem(self.logic.modelTitle(path), path)
            combo.setCurrentIndex(combo.findData(path))

    # -- actions ------------------------------------------------------------------------------
    def _ensureDependencies(self, what: str) -> bool:
        """Install what is missing (asking first); False, with a status line, if it was not."""
        if self.logic.ensureDependencies():
            return True
        self._setStatus(_("{what} needs PyTorch and the Python packages listed in the log; they were "
                          "not installed.").format(what=what))
        return False

    def onInstallDependenciesButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the Python packages."), waitCursor=True):
            installed = self.logic.ensureDependencies()
            self._updateDependencies()
            self._setStatus(_("The Python packages are installed.") if installed else
                            _("The Python packages were not installed."))

    def onSynthesizeDrrsButton(self) -> None:
        """Render the DRRs of the selected CT at the model's geometry, in the background."""
        if not self._ensureDependencies(_("Rendering DRRs")):
            return
        parameters = self._parameterNode
        ctVolume = parameters.ctVolume
        with slicer.util.tryWithErrorDisplay(_("Failed to start the DRR synthesis."), waitCursor=True):
            task = self.logic.startSynthesizeDrrs(
                ctVolume,
                apOutputNode=parameters.apVolume if self.logic.isDrrOf(parameters.apVolume, ctVolume) else None,
                lateralOutputNode=(parameters.lateralVolume
                                   if self.logic.isDrrOf(parameters.lateralVolume, ctVolume) else None),
                device=parameters.device, modelName=parameters.modelName or None)
            self._startTask(task, self._drrsDone, _("Rendering DRRs of {name}...").format(name=ctVolume.GetName()))

    def onSimulateButton(self) -> None:
        """Realistic radiographs of the selected CT (``xraytoct simulate``: polychromatic beam,
        scatter, blur, noise, vendor processing) at the model's geometry, in the background."""
        if not self._ensureDependencies(_("Simulating radiographs")):
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the radiograph simulation."), waitCursor=True):
            task = self.logic.startSimulate(parameters.ctVolume, modelName=parameters.modelName or None,
                                            device=parameters.device)
            self._startTask(task, self._simulationDone, _("Simulating radiographs of {name}...").format(
                name=parameters.ctVolume.GetName()))

    def _simulationDone(self, nodes) -> None:
        self.logic.showRadiographs(nodes)
        self._setStatus(_("Simulated radiographs: {names}. To reconstruct from them, select them as the "
                          "radiographs and clear the CT selector (the sCT is then in the model's template "
                          "space); Harmonize translates them into the DRR domain first.").format(
            names=", ".join(n.GetName() for n in nodes.values())))

    def onHarmonizeButton(self) -> None:
        """Translate the checked radiographs, one background process per view, and select the
        harmonised images as the inputs."""
        if not self._ensureDependencies(_("Harmonising radiographs")):
            return
        parameters = self._parameterNode
        pending = [(view, node) for view, node, wanted in (
            ("ap", parameters.apVolume, parameters.harmonizeAp),
            ("lateral", parameters.lateralVolume, parameters.harmonizeLateral)) if wanted and node is not None]

        def runNext(done=None):
            if done is not None:
                view = done.GetAttribute(mrml.ATTRIBUTE_VIEW)
                if view == "ap":
                    self._parameterNode.apVolume = done
                else:
                    self._parameterNode.lateralVolume = done
            if not pending:
                self._setStatus(_("Harmonised with {model}; the harmonised images are the inputs now.").format(
                    model=parameters.harmonizerName))
                return
            view, node = pending.pop(0)
            with slicer.util.tryWithErrorDisplay(_("Failed to start the harmonisation."), waitCursor=True):
                task = self.logic.startHarmonize(node, parameters.harmonizerName, view=view,
                                                 device=parameters.device)
                self._startTask(task, runNext, _("Harmonising {name}...").format(name=node.GetName()))

        runNext()

    def _drrsDone(self, nodes) -> None:
        self._parameterNode.apVolume = nodes.get("ap")
        self._parameterNode.lateralVolume = nodes.get("lateral")
        self.logic.showRadiographs(nodes)
        self._setStatus(_("DRRs ready: {names}.").format(names=", ".join(n.GetName() for n in nodes.values())))

    def onApplyButton(self) -> None:
        """Start the reconstruction in a background process (the panel polls it)."""
        if not self._ensureDependencies(_("The reconstruction")):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the synthetic CT computation."), waitCursor=True):
            parameters = self._parameterNode
            task = self.logic.startReconstruction(
                parameters.apVolume, parameters.lateralVolume, modelName=parameters.modelName,
                device=parameters.device, ctVolumeNode=parameters.ctVolume,
                outputVolumeNode=parameters.outputVolume, refine=parameters.refine,
                samples=parameters.samples, uncertaintyVolumeNode=parameters.uncertaintyVolume)
            self._startTask(task, self._reconstructionDone, _("Computing the synthetic CT..."))

    def _reconstructionDone(self, sctNode) -> None:
        self._parameterNode.outputVolume = sctNode
        if not self._parameterNode.groundTruthVolume:
            self._parameterNode.groundTruthVolume = self.logic.defaultGroundTruth(sctNode)
        uncertainty = mrml.uncertainty_of(sctNode)
        if uncertainty is not None:  # the spread as a colour overlay on the sCT, with its legend
            self._parameterNode.uncertaintyVolume = uncertainty
            slicer.util.setSliceViewerLayers(background=sctNode, foreground=uncertainty, foregroundOpacity=0.5,
                                             fit=True)
        else:
            slicer.util.setSliceViewerLayers(background=sctNode, fit=True)
        summary = self.logic.consistencySummary(sctNode)
        self.ui.consistencyLabel.text = summary
        self._setStatus(_("{name} is ready. {summary}").format(name=sctNode.GetName(), summary=summary))

    def onCompareButton(self) -> None:
        """Compare the sCT with the ground truth in the background (metrics, difference map)."""
        if not self._ensureDependencies(_("The comparison")):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the comparison."), waitCursor=True):
            parameters = self._parameterNode
            task = self.logic.startCompare(parameters.outputVolume, parameters.groundTruthVolume,
                                           differenceVolumeNode=parameters.differenceVolume,
                                           metricsTableNode=parameters.metricsTable,
                                           opacity=parameters.differenceOpacity)
            self._startTask(task, self._compareDone, _("Comparing the synthetic CT with the ground truth..."))

    def _compareDone(self, result) -> None:
        parameters = self._parameterNode
        parameters.differenceVolume = result["difference"]
        parameters.metricsTable = result["table"]
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(mrml.COMPARE_LAYOUT_ID)
            self.logic.linkCompareViews(parameters.outputVolume, parameters.groundTruthVolume,
                                        result["difference"], opacity=parameters.differenceOpacity)
            for viewName, _label, _color in mrml.COMPARE_VIEWS.values():
                sliceWidget = layoutManager.sliceWidget(viewName)
                if sliceWidget is not None:
                    sliceWidget.sliceLogic().FitSliceToAll()
        self.ui.metricsTableView.setMRMLTableNode(result["table"])
        self._setStatus(self.logic.metricsSummary(result["rows"]))

    def _startTask(self, task, onDone: Callable[[Any], None], status: str) -> None:
        """Follow a background task (:class:`XRayToCTLib.process.CommandTask`) with the timer;
        ``onDone(value)`` puts its result into the panel."""
        self._task, self._onTaskDone = task, onDone
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self._setStatus(status)
        self._timer.start()
        self._checkCanApply()

    def onCancelButton(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._setStatus(_("Cancelling..."))

    def onPollTask(self) -> None:
        """Show the background task's progress; when it has ended, put its result in the scene."""
        task = self._task
        if task is None:
            self._timer.stop()
            return
        self.ui.progressBar.value = int(round(100 * task.fraction))
        if task.message:
            self.ui.statusLabel.text = task.message
        if not task.done:
            return
        self._timer.stop()
        self._task = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        try:
            with slicer.util.tryWithErrorDisplay(_("The background task failed."), waitCursor=True):
                try:
                    value = task.result()
                except Cancelled:
                    self._setStatus(_("Cancelled: nothing was changed."))
                    return
                if self._parameterNode is not None:
                    self._onTaskDone(value)
        finally:
            if self._parameterNode is not None:
                self._checkCanApply()

    def onOpacityChanged(self, value: float) -> None:
        self.logic.setDifferenceOpacity(value)


#
# XRayToCTLogic
#


class XRayToCTLogic(ScriptedLoadableModuleLogic):
    """All the computation of the module, usable without the GUI:

    .. code-block:: python

      logic = slicer.util.getModuleLogic("XRayToCT")  # or XRayToCT.XRayToCTLogic()
      logic.ensureDependencies()
      ct = slicer.util.getNode("CTHead")
      drrs = logic.synthesizeDrrs(ct, device="cpu")
      sct = logic.reconstruct(drrs["ap"], drrs["lateral"], modelName=logic.smallestModel(), ctVolumeNode=ct)
      result = logic.compare(sct, ct)   # difference node, metrics table node, rows

    These block (they run in Slicer's process). The panel uses their ``start...`` forms,
    which run the same work as the ``xraytoct`` command in a separate process and return a
    :class:`XRayToCTLib.process.CommandTask` (poll ``done``/``fraction``/``message``,
    ``cancel()``, then ``result()`` gives what the blocking form returns; ``wait()`` blocks).

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)
        self._reconstructors = {}

    def getParameterNode(self):
        return XRayToCTParameterNode(super().getParameterNode())

    # -- dependencies -----------------------------------------------------------------------
    @staticmethod
    def missingDependencies() -> list:
        """Import names of the required Python packages that are not installed."""
        return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install the missing Python packages (PyTorch, MONAI, SimpleITK, ...).

        Nothing is downloaded without asking: PyTorch comes from the PyTorch extension
        (``PyTorchUtils``, which picks the CPU or CUDA build for this computer and asks
        itself), the other packages from pip after one confirmation. Returns True when
        everything is importable afterwards.
        """
        missing = self.missingDependencies()
        if not missing:
            return True
        logging.info(f"XRayToCT: missing Python packages: {', '.join(missing)}")

        if "torch" in missing and hasattr(getattr(slicer, "modules", None), "pytorchutils"):
            import PyTorchUtils

            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=askConfirmation, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
            if torch is None:
                logging.warning("XRayToCT: PyTorch was not installed")
                return False
            missing.remove("torch")

        if missing:
            requirements = [REQUIREMENTS[name] for name in missing]
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("XRayToCT needs these Python packages, which are not installed:\n\n{packages}\n\n"
                  "Download and install them now with pip? This can take a few minutes "
                  "(PyTorch is about 1 GB when it is among them).").format(packages="\n".join(requirements)),
                windowTitle=_("XRayToCT: install Python packages")):
                return False
            slicer.util.pip_install(" ".join(requirements))
            importlib.invalidate_caches()

        stillMissing = self.missingDependencies()
        if stillMissing:
            logging.error(f"XRayToCT: still missing after installation: {', '.join(stillMissing)}")
        return not stillMissing

    def _importLibrary(self, name: str):
        """Import ``XRayToCTLib.<name>``, with a clear message when a package is missing."""
        try:
            return importlib.import_module(f"XRayToCTLib.{name}")
        except ImportError as e:
            missing = self.missingDependencies()
            if missing:
                raise RuntimeError(
                    f"XRayToCTLib.{name} needs Python packages that are not installed "
                    f"({', '.join(missing)}): call XRayToCTLogic().ensureDependencies() "
                    f"or use a button of the XRayToCT module, which offers to install them") from e
            raise

    def deviceDescription(self) -> str:
        """What ``auto`` computes on, in words (the GPU's name when PyTorch sees one)."""
        if importlib.util.find_spec("torch") is None:
            return _("PyTorch is not installed yet: the device is detected after installation.")
        import torch

        if torch.cuda.is_available():
            return _("GPU: {name} (CUDA {cuda})").format(name=torch.cuda.get_device_name(0),
                                                        cuda=torch.version.cuda)
        return _("No CUDA GPU detected: the CPU is used (a reconstruction takes longer).")

    # -- node <-> library conversions (XRayToCTLib.mrml does the work) ---------------------------
    @staticmethod
    def volumeFromNode(volumeNode):
        """The library :class:`~XRayToCTLib.geometry.Volume` of a scalar volume node (LPS),
        in world coordinates (a linear parent transform is applied to the geometry)."""
        return mrml.volume_from_node(volumeNode)

    @staticmethod
    def updateNodeFromRadiograph(volumeNode, radiograph, view: str, sourceNode=None) -> None:
        """Put a :class:`~XRayToCTLib.geometry.Radiograph` into a single-slice scalar volume
        (see :func:`XRayToCTLib.mrml.update_node_from_radiograph`)."""
        mrml.update_node_from_radiograph(volumeNode, radiograph, view, source_node=sourceNode)

    @staticmethod
    def isDrrOf(volumeNode, ctVolumeNode) -> bool:
        """Whether ``volumeNode`` is a DRR that XRayToCT rendered from ``ctVolumeNode``."""
        return mrml.is_drr_of(volumeNode, ctVolumeNode)

    @staticmethod
    def firstCtVolume(scene=None):
        """The first scalar volume of the scene that XRayToCT did not make (a CT), or None."""
        scene = scene or slicer.mrmlScene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(ATTRIBUTE_KIND) \
                    or node.GetAttribute(ATTRIBUTE_VIEW):
                continue
            return node
        return None

    # -- models -----------------------------------------------------------------------------
    def modelCatalog(self) -> list:
        """The installed reconstruction models: ``models.catalog(kind="reconstruction")``
        entries (name, title, description, file, sha256, size, views, output_size, trained_on)."""
        return list(self._importLibrary("models").catalog(kind="reconstruction"))

    def harmonizerCatalog(self) -> list:
        """The installed harmonisers (2D translation models, ``kind`` ``translation_2d``)."""
        return list(self._importLibrary("models").catalog(kind="translation_2d"))

    def smallestModel(self) -> Optional[str]:
        """Name of the smallest catalog model (by file size), or None when there is none."""
        catalog = self.modelCatalog()
        if not catalog:
            return None
        return min(catalog, key=lambda e: (e.get("size") or 0, e["name"]))["name"]

    @staticmethod
    def modelTitle(nameOrPath: str) -> str:
        import os
        return os.path.basename(nameOrPath) if ("/" in nameOrPath or "\\" in nameOrPath) else nameOrPath

    @staticmethod
    def modelDescription(entry) -> str:
        """One paragraph on a catalog entry (or a file path) for the panel."""
        if not entry:
            return _("No model selected.")
        if isinstance(entry, str):
            return _("Model file: {path}").format(path=entry)
        views = " + ".join(entry.get("views") or [])
        size = entry.get("output_size")
        parts = [entry.get("description") or "",
                 _("Views: {views}.").format(views=views) if views else "",
                 _("Output: {n}\u00b3 voxels.").format(n=size) if size else "",
                 _("Trained on: {data}.").format(data=entry.get("trained_on")) if entry.get("trained_on") else ""]
        return " ".join(p for p in parts if p)

    def checkModelFile(self, path: str) -> None:
        """Load a model package once (raises a clear error when it is not one)."""
        self.reconstructor(path, "cpu")

    def reconstructor(self, modelName: str, device: str = "auto", harmonize: Optional[str] = None):
        """The loaded :class:`~XRayToCTLib.inference.Reconstructor` (cached per model, device
        and harmoniser)."""
        if not modelName:
            raise XRayToCTError(_("No model is selected: pick one in the model list or load a model file."))
        key = (str(modelName), str(device), str(harmonize or ""))
        if key not in self._reconstructors:
            inference = self._importLibrary("inference")
            self._reconstructors[key] = inference.Reconstructor(modelName, device=device, harmonize=harmonize or None)
        return self._reconstructors[key]

    def modelViews(self, modelName: str) -> list:
        """The input views of a model (read from its package's header; no weights loaded)."""
        package = self._importLibrary("models.package")
        return list(package.read_info(package.resolve_model(modelName))["spec"]["views"])

    def modelGeometries(self, modelName: str) -> dict:
        """``{view: ProjectionGeometry}`` of a model's inputs (relative to its canonical grid)."""
        from XRayToCTLib.geometry import ProjectionGeometry

        spec = self.reconstructor(modelName, "cpu").spec
        out = {}
        for view in spec.views:
            geometry = spec.geometry[view]
            out[view] = geometry if isinstance(geometry, ProjectionGeometry) else ProjectionGeometry.from_dict(geometry)
        return out

    # -- actions ---------------------------------------------------------------------------
    def synthesizeDrrs(self, ctVolumeNode, apOutputNode=None, lateralOutputNode=None,
                       pixels: int = 128, device: str = "auto", modelName: Optional[str] = None) -> dict:
        """Render DRRs of a CT (HU): at the model's geometry when ``modelName`` is given (its
        views and detector), else AP and lateral at the project's default geometry with
        ``pixels`` detector pixels per side; the isocentre is the CT's centre.

        :param ctVolumeNode: the CT, a ``vtkMRMLScalarVolumeNode`` in HU.
        :param apOutputNode: scalar volume node to write the AP DRR into (new one if None).
        :param lateralOutputNode: the same for the lateral DRR.
        :param pixels: detector pixels per side (default geometry only).
        :param device: ``auto``, ``cuda`` or ``cpu``.
        :param modelName: catalog name or package path whose geometry to use.
        :return: ``{view: node}``.
        """
        if ctVolumeNode is None or ctVolumeNode.GetImageData() is None:
            raise ValueError(_("Select a CT volume with image data."))
        self._importLibrary("drr")
        startTime = time.time()
        geometries = self.modelGeometries(modelName) if modelName else None
        nodes = mrml.synthesize_drrs(ctVolumeNode, geometries=geometries, pixels=int(pixels), device=device,
                                     output_nodes={"ap": apOutputNode, "lateral": lateralOutputNode})
        logging.info(f"XRayToCT: rendered DRRs ({', '.join(nodes)}) of {ctVolumeNode.GetName()} "
                     f"in {time.time() - startTime:.2f} s")
        return nodes

    def startSynthesizeDrrs(self, ctVolumeNode, apOutputNode=None, lateralOutputNode=None, pixels: int = 128,
                            device: str = "auto", modelName: Optional[str] = None):
        """:meth:`synthesizeDrrs` in a background process (``xraytoct drr``); the task's
        ``result()`` is ``{view: node}``."""
        if ctVolumeNode is None or ctVolumeNode.GetImageData() is None:
            raise ValueError(_("Select a CT volume with image data."))
        self._importLibrary("io")
        return mrml_tasks.drr_task(ctVolumeNode, {"ap": apOutputNode, "lateral": lateralOutputNode},
                                   pixels=pixels, device=device, model=modelName)

    def startSimulate(self, ctVolumeNode, modelName: Optional[str] = None, device: str = "auto", seed: int = 0,
                      options: Optional[list] = None):
        """Realistic radiographs of a CT in a background process (``xraytoct simulate``, at the
        model's geometry when ``modelName`` is given; ``options``: more of its arguments, e.g.
        ``["--kvp", 80, "--processing", "cr"]``). The task's ``result()`` is ``{view: node}``:
        new nodes ``"<CT> simulated <view>"``, which are radiographs (not the CT's DRRs)."""
        if ctVolumeNode is None or ctVolumeNode.GetImageData() is None:
            raise ValueError(_("Select a CT volume with image data."))
        self._importLibrary("io")
        return mrml_tasks.simulate_task(ctVolumeNode, model=modelName, device=device, seed=seed,
                                        options=options or ())

    def harmonizeProblem(self, parameters) -> Optional[str]:
        """Why Harmonize cannot run with these parameters, in words; None when it can."""
        if not parameters.harmonizerName:
            return _("No harmoniser is installed or selected.")
        chosen = [node for node, wanted in ((parameters.apVolume, parameters.harmonizeAp),
                                            (parameters.lateralVolume, parameters.harmonizeLateral)) if wanted]
        if not any(node is not None for node in chosen):
            return _("Select a radiograph and check its view.")
        if any(node is not None and node.GetAttribute(ATTRIBUTE_KIND) == mrml.KIND_DRR for node in chosen):
            return _("DRRs are already in the DRR domain: harmonise real or simulated radiographs.")
        return None

    def startHarmonize(self, radiographNode, harmonizerName: str, view: Optional[str] = None, device: str = "auto"):
        """Translate a radiograph into the DRR domain in a background process (``xraytoct
        harmonize``); the task's ``result()`` is a new node ``"<name> harmonised"`` with the
        input's geometry and view, which names the harmoniser."""
        if radiographNode is None:
            raise ValueError(_("Select a radiograph."))
        if not harmonizerName:
            raise XRayToCTError(_("No harmoniser is selected."))
        self._importLibrary("io")
        return mrml_tasks.harmonize_task(radiographNode, harmonizerName, view=view, device=device)

    @staticmethod
    def showRadiographs(nodes: dict) -> None:
        """Show the AP radiograph in the Green (coronal) view and the lateral one in the Yellow
        (sagittal) view, each view turned to its detector plane. No-op without a layout."""
        app = getattr(slicer, "app", None)
        layoutManager = app.layoutManager() if app is not None and hasattr(app, "layoutManager") else None
        if layoutManager is None:
            return
        for viewName, view in (("Green", "ap"), ("Yellow", "lateral")):
            volumeNode = nodes.get(view)
            sliceWidget = layoutManager.sliceWidget(viewName)
            if volumeNode is None or sliceWidget is None:
                continue
            sliceWidget.mrmlSliceCompositeNode().SetBackgroundVolumeID(volumeNode.GetID())
            sliceWidget.mrmlSliceNode().RotateToVolumePlane(volumeNode)
            sliceWidget.fitSliceToBackground()

    def reconstructionProblem(self, parameters) -> Optional[str]:
        """Why Apply cannot run with these parameters, in words; None when it can."""
        if not parameters.modelName:
            return _("Select a model (or load a model file).")
        if not (parameters.ctVolume or parameters.apVolume or parameters.lateralVolume):
            return _("Select a CT, or the radiographs (AP and lateral).")
        return None

    @staticmethod
    def _usesCt(apVolumeNode, lateralVolumeNode, ctVolumeNode) -> bool:
        """The CT is the input when no real radiograph is selected (only its own DRRs, or none)."""
        if ctVolumeNode is None:
            return False
        return all(node is None or mrml.is_drr_of(node, ctVolumeNode) for node in (apVolumeNode, lateralVolumeNode))

    def startReconstruction(self, apVolumeNode, lateralVolumeNode, modelName: str, device: str = "auto",
                            ctVolumeNode=None, outputVolumeNode=None, register: Optional[bool] = None,
                            refine: Any = False, samples: int = 1, seed: int = 0, uncertaintyVolumeNode=None,
                            harmonize: Optional[str] = None):
        """:meth:`reconstruct` in a background process (``xraytoct reconstruct``); the task's
        ``result()`` is the sCT node. ``refine`` is False, True or a number of steps."""
        if not isinstance(refine, int):  # False, True or a number of steps (bools are ints)
            raise XRayToCTError(_("In the background refine is True or a number of steps; "
                                  "for other settings call reconstruct()."))
        job = self._reconstructionJob(apVolumeNode, lateralVolumeNode, modelName, device,
                                      ctVolumeNode, outputVolumeNode, register, refine, uncertaintyVolumeNode,
                                      harmonize)
        self._importLibrary("io")
        return mrml_tasks.reconstruction_task(job.finish, model=modelName, device=device, ct=job.ct, views=job.views,
                                              register=job.register, refine=refine, samples=samples, seed=seed,
                                              harmonize=harmonize)

    def reconstruct(self, apVolumeNode, lateralVolumeNode, modelName: str, device: str = "auto",
                    ctVolumeNode=None, outputVolumeNode=None, register: Optional[bool] = None,
                    progress: Optional[Callable[[float, str], Any]] = None, refine: Any = False,
                    samples: int = 1, seed: int = 0, uncertaintyVolumeNode=None, harmonize: Optional[str] = None):
        """Synthetic CT from radiographs or from a CT, into a scalar volume node (blocks).

        * From a CT: when ``ctVolumeNode`` is given and the radiograph nodes are None or its
          own DRRs. The CT is preprocessed (registered to the head template, which ships with
          the module, unless ``register`` is False), its DRRs are rendered at the model's
          geometry (written into the AP/lateral nodes when given), and the sCT is put back on
          the CT's grid (patient space).
        * From radiographs (``apVolumeNode``, ``lateralVolumeNode``; the model's views): the
          sCT is on the model's canonical grid centred on the origin.

        The output node (``outputVolumeNode`` or a new ``"<name> sCT (synthetic)"``) is
        labelled synthetic and carries the projection-consistency scores
        (``XRayToCT.Consistency``). ``progress(fraction, message)`` may raise
        :class:`~XRayToCTLib.errors.Cancelled`. ``refine`` (True or a number of steps) fits
        the sCT to its views afterwards (:mod:`XRayToCTLib.refine`); the node's method is then
        ``<model>+refine``. ``samples`` >= 2 (a diffusion model): the sCT is the samples' mean
        and their voxel spread goes into ``uncertaintyVolumeNode`` (or a new node), a colour
        map linked from the sCT node (:func:`XRayToCTLib.mrml.uncertainty_of`); ``seed`` makes
        the samples reproducible. ``harmonize`` (a harmoniser's catalog name or file) translates
        each radiograph into the DRR domain first (radiograph inputs only; the panel's
        *Harmonize* does it per view, as a step of its own). Returns the node.
        """
        job = self._reconstructionJob(apVolumeNode, lateralVolumeNode, modelName, device,
                                      ctVolumeNode, outputVolumeNode, register, refine, uncertaintyVolumeNode,
                                      harmonize)
        return job.finish(job.work(progress, samples=samples, seed=seed))

    def _reconstructionJob(self, apVolumeNode, lateralVolumeNode, modelName, device, ctVolumeNode,
                           outputVolumeNode, register, refine=False, uncertaintyVolumeNode=None, harmonize=None):
        """The inputs (``ct`` or ``views``, library objects), ``work(progress)`` (computes in
        this process) and ``finish(result)`` (writes the scene) of a reconstruction."""
        if not modelName:
            raise XRayToCTError(_("No model is selected: pick one in the model list or load a model file."))
        useCt = self._usesCt(apVolumeNode, lateralVolumeNode, ctVolumeNode)
        # the library's one request decides (the same choices and errors as the command line):
        # a CT whose radiograph selectors are empty or hold its own DRRs is the input; real
        # radiographs are the input otherwise, and a CT selected beside them is refused
        if ctVolumeNode is not None and not useCt:
            raise XRayToCTError(_("Give either a CT or radiographs, not both. Clear the CT selector to "
                                  "reconstruct from the radiographs, or clear the radiograph selectors to "
                                  "reconstruct from the CT's DRRs."))
        ct = mrml.volume_from_node(ctVolumeNode) if useCt else None
        views = None
        if not useCt:
            views = {view: mrml.radiograph_from_node(node, view)
                     for view, node in (("ap", apVolumeNode), ("lateral", lateralVolumeNode)) if node is not None}
            if not views:
                raise XRayToCTError(_("Select the radiographs (AP and lateral), or a CT."))
            modelViews = self.modelViews(modelName)
            wanted = {view: views[view] for view in modelViews if view in views}
            views = wanted if len(wanted) == len(modelViews) else views  # else the library says what is missing
        register = "auto" if register is None else register
        sourceNode = ctVolumeNode if useCt else (apVolumeNode or lateralVolumeNode)
        sourceName = sourceNode.GetName()
        scene = sourceNode.GetScene() or slicer.mrmlScene

        def work(progress, samples=1, seed=0):
            reconstructor = self.reconstructor(modelName, device, harmonize)
            try:
                return reconstructor.reconstruct(ct=ct, views=views, register=register, progress=progress,
                                                 refine=refine or None,
                                                 **({"samples": int(samples), "seed": int(seed)} if samples > 1 else {}))
            except TemplateUnavailable as err:
                raise XRayToCTError(_("{problem}. Reinstall the extension (it ships a head CT "
                                      "template), set {env}, or reconstruct without "
                                      "registration.").format(problem=err, env=TEMPLATE_ENV)) from None

        def finish(result):
            return mrml_tasks.put_reconstruction(
                result, model=modelName, scene=scene, source_name=sourceName, ct_node=ctVolumeNode if useCt else None,
                ap_node=apVolumeNode, lateral_node=lateralVolumeNode, output_node=outputVolumeNode,
                uncertainty_node=uncertaintyVolumeNode)

        return SimpleNamespace(ct=ct, views=views, register=register, work=work, finish=finish)

    @staticmethod
    def consistencySummary(sctVolumeNode) -> str:
        """The projection-consistency score of an sCT node in words ("" when it has none)."""
        scores = mrml.consistency_of(sctVolumeNode)
        mean = scores.get("mean") or {}
        if not mean:
            return ""
        views = scores.get("views") or {}
        perView = ", ".join(f"{VIEW_LABELS.get(v, v)} {s.get('ssim', float('nan')):.3f}" for v, s in views.items())
        return _("Projection consistency (the sCT's own DRRs vs the inputs): SSIM {ssim:.3f}, PSNR {psnr:.1f} dB"
                 "{perView}.").format(ssim=mean.get("ssim", float("nan")), psnr=mean.get("psnr", float("nan")),
                                      perView=f" (SSIM {perView})" if perView else "")

    @staticmethod
    def defaultGroundTruth(sctVolumeNode):
        """The CT the sCT (or its DRRs) came from, when it is in the scene."""
        source = mrml.source_ct_of(sctVolumeNode)
        if source is not None:
            return source
        scene = sctVolumeNode.GetScene()
        for nodeId in (sctVolumeNode.GetAttribute(mrml.ATTRIBUTE_INPUTS) or "").split():
            drr = scene.GetNodeByID(nodeId) if scene is not None else None
            ct = mrml.source_ct_of(drr)
            if ct is not None:
                return ct
        return None

    # -- compare ---------------------------------------------------------------------------------
    def compare(self, sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode=None, metricsTableNode=None,
                opacity: float = 0.5, showLayout: bool = True) -> dict:
        """Compare an sCT with a ground-truth CT (blocks; :meth:`startCompare` runs it in the
        background).

        Computes the metrics (:func:`XRayToCTLib.compare.compare_volumes`: SSIM, PSNR, cosine,
        MAE in HU, in the brain and full windows, head-only and whole volume; the sCT is
        resampled onto the ground truth's grid) into a table node, the difference map (sCT -
        ground truth, HU, on the sCT's grid, diverging colours with a legend) into a volume
        node, registers the compare layout with the scene's layout node (``showLayout``:
        switches to it) and links its views. Returns ``{"difference": node, "table": node,
        "rows": [...]}``."""
        job = self._compareJob(sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode, metricsTableNode,
                               opacity, showLayout)
        comparison = self._importLibrary("compare").compare_volumes(job.sct, job.gt, uncertainty=job.spread)
        return job.finish(comparison.rows, comparison.difference)

    def startCompare(self, sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode=None, metricsTableNode=None,
                     opacity: float = 0.5, showLayout: bool = True):
        """:meth:`compare` in a background process (``xraytoct compare``); the task's
        ``result()`` is what :meth:`compare` returns."""
        job = self._compareJob(sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode, metricsTableNode,
                               opacity, showLayout)
        self._importLibrary("io")
        return mrml_tasks.compare_task(job.finish, job.sct, job.gt, job.spread)

    def _compareJob(self, sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode, metricsTableNode,
                    opacity, showLayout):
        """The volumes of a comparison (``sct``, ``gt`` and the sCT's ``spread`` or None) and
        ``finish(rows, difference)``, which writes the scene."""
        if sctVolumeNode is None or groundTruthVolumeNode is None:
            raise ValueError(_("Select a synthetic CT and a ground-truth CT."))

        def finish(rows, difference):
            return mrml_tasks.put_comparison(rows, difference, sctVolumeNode, groundTruthVolumeNode,
                                             difference_node=differenceVolumeNode, table_node=metricsTableNode,
                                             opacity=opacity, show_layout=showLayout)

        spreadNode = mrml.uncertainty_of(sctVolumeNode)
        return SimpleNamespace(sct=mrml.volume_from_node(sctVolumeNode), gt=mrml.volume_from_node(groundTruthVolumeNode),
                               spread=mrml.volume_from_node(spreadNode) if spreadNode is not None else None,
                               finish=finish)

    @staticmethod
    def layoutNode(scene=None):
        """The scene's layout node (None in a scene without one)."""
        scene = scene or slicer.mrmlScene
        return scene.GetFirstNodeByClass("vtkMRMLLayoutNode") if hasattr(scene, "GetFirstNodeByClass") else \
            (scene.GetNthNodeByClass(0, "vtkMRMLLayoutNode") if scene.GetNumberOfNodesByClass("vtkMRMLLayoutNode") else None)

    @staticmethod
    def linkCompareViews(sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode=None, opacity: float = 0.5) -> dict:
        """Show and link the compare views that exist (see :func:`XRayToCTLib.mrml.link_compare_views`)."""
        scene = sctVolumeNode.GetScene() or slicer.mrmlScene
        return mrml.link_compare_views(scene, sctVolumeNode, groundTruthVolumeNode, differenceVolumeNode,
                                       opacity=opacity)

    @staticmethod
    def setDifferenceOpacity(opacity: float, scene=None) -> None:
        mrml.set_difference_opacity(scene or slicer.mrmlScene, opacity)

    @staticmethod
    def metricsSummary(rows) -> str:
        """The head-region metrics in one line."""
        values = {(r["metric"], r["window"], r["region"]): r["value"] for r in rows}

        def get(metric, window, region="head"):
            return values.get((metric, window, region), float("nan"))

        text = _("Inside the head: SSIM {ssim_b:.3f} (brain window) / {ssim_f:.3f} (full range), PSNR {psnr_f:.1f} dB, "
                 "MAE {mae:.0f} HU.").format(
            ssim_b=get("ssim", "brain"), ssim_f=get("ssim", "full"), psnr_f=get("psnr", "full"),
            mae=get("mae_hu", "full"))
        if ("spread_hu", "full", "head") in values:
            text += " " + _("Uncertainty: mean spread {spread:.0f} HU; its rank correlation with the error "
                            "{rho:.2f}.").format(spread=get("spread_hu", "full"), rho=get("spread_error_spearman", "full"))
        return text + " " + _("All values are in the table.")

    # -- sample data ------------------------------------------------------------------------------
    def loadSampleData(self, scene=None, withDrrs: bool = True) -> list:
        """Load the sample phantom head CT that ships with the module (:data:`SAMPLE_FILE`;
        no download, no PyTorch) and, when PyTorch is installed and ``withDrrs``, render its
        AP and lateral DRRs. Shows the CT in the slice views. Returns the new nodes."""
        scene = scene or slicer.mrmlScene
        volume = importlib.import_module("XRayToCTLib.io").read_volume(_modulePath(SAMPLE_FILE))
        ctNode = mrml.add_volume_node(scene, volume, SAMPLE_NODE_NAME, window_level=(2000.0, 0.0))
        nodes = [ctNode]
        if withDrrs and not self.missingDependencies():
            nodes += list(self.synthesizeDrrs(ctNode, device="auto").values())
        if getattr(getattr(slicer, "app", None), "layoutManager", None) is not None and slicer.app.layoutManager():
            slicer.util.setSliceViewerLayers(background=ctNode, fit=True)
        return nodes


#
# XRayToCTTest
#


class XRayToCTTest(ScriptedLoadableModuleTest):
    """
    This is the test case for your scripted module.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """The sample data loads without any extra package; the other tests need PyTorch and
        the library's packages and are reported as skipped (not failed) without them."""
        self.setUp()
        self.test_SampleData()
        missing = XRayToCTLogic.missingDependencies()
        if missing:
            self._skip(f"Python packages missing: {', '.join(missing)} (the XRayToCT module's "
                       "Install dependencies button installs them)")
            return
        self.setUp()
        self.test_SynthesizeDrrs()
        self.setUp()
        self.test_WholeChain()

    def _skip(self, reason: str) -> None:
        """Skip the rest: a skipped test under a unittest runner (ctest); under Slicer's
        *Reload and Test*, which calls :meth:`runTest` directly and reports any exception as
        a failure, a message that says what was skipped and why."""
        if getattr(self, "_outcome", None) is not None:
            self.skipTest(reason)
        logging.warning(f"XRayToCT self-test: skipped: {reason}")
        self.delayDisplay(f"Skipped: {reason}")

    def test_SampleData(self):
        """The shipped sample CT loads (no download, no PyTorch), with its geometry and HU."""
        import numpy as np

        nodes = XRayToCTLogic().loadSampleData(withDrrs=False)
        self.assertEqual([n.GetName() for n in nodes], [SAMPLE_NODE_NAME])
        volume = mrml.volume_from_node(nodes[0])
        self.assertEqual(volume.array.shape, (128, 128, 128))
        np.testing.assert_allclose(volume.spacing, (2.0, 2.0, 2.0))
        self.assertGreater(float(volume.array.max()), 1000.0)  # bone
        self.assertIs(XRayToCTLogic.firstCtVolume(), nodes[0])

    def _phantomNode(self, size=64, spacing=4.0):
        from XRayToCTLib.phantom import head_phantom

        return mrml.add_volume_node(slicer.mrmlScene, head_phantom(size=size, spacing=spacing, seed=0), "Phantom CT")

    def test_SynthesizeDrrs(self):
        """DRRs of a small phantom head CT, rendered on the CPU, land in two scalar volume
        nodes with the detector's shape, spacing and geometry attributes."""
        import numpy as np

        self.delayDisplay("Starting the test")
        logic = XRayToCTLogic()
        if "torch" in logic.missingDependencies():
            return self._skip("PyTorch is not installed (the XRayToCT module offers to install it)")

        from XRayToCTLib.geometry import ProjectionGeometry

        ctNode = self._phantomNode()
        # the node round-trips to the same library geometry
        roundTrip = logic.volumeFromNode(ctNode)
        self.assertEqual(roundTrip.array.shape, (64, 64, 64))
        self.delayDisplay("Phantom loaded")

        pixels = 64
        nodes = logic.synthesizeDrrs(ctNode, pixels=pixels, device="cpu")
        self.assertEqual(set(nodes), {"ap", "lateral"})
        for view, node in nodes.items():
            self.assertTrue(node.IsA("vtkMRMLScalarVolumeNode"))
            array = mrml.radiograph_from_node(node).array
            self.assertEqual(array.shape, (pixels, pixels))
            self.assertTrue(np.all(np.isfinite(array)))
            self.assertGreater(float(array.std()), 0.0)  # not a flat image
            self.assertEqual(node.GetAttribute(ATTRIBUTE_VIEW), view)
            geometry = ProjectionGeometry.from_dict(json.loads(node.GetAttribute(ATTRIBUTE_GEOMETRY)))
            self.assertEqual(geometry.view, view)
            self.assertEqual(geometry.pixels, (pixels, pixels))
            rowSpacing, colSpacing = geometry.pixel_spacing
            np.testing.assert_allclose(node.GetSpacing(), (colSpacing, rowSpacing, 1.0), rtol=1e-6)
            self.assertTrue(logic.isDrrOf(node, ctNode))
        self.assertFalse(np.allclose(mrml.radiograph_from_node(nodes["ap"]).array,
                                     mrml.radiograph_from_node(nodes["lateral"]).array))

        # rendering again into the same nodes reuses them
        again = logic.synthesizeDrrs(ctNode, nodes["ap"], nodes["lateral"], pixels=pixels, device="cpu")
        self.assertIs(again["ap"], nodes["ap"])
        self.assertIs(again["lateral"], nodes["lateral"])
        self.delayDisplay("Test passed")

    def test_WholeChain(self):
        """Phantom CT -> DRRs at the model's geometry -> sCT (background process, CPU) -> compare
        (difference map, metrics table, linked compare views), with the smallest catalog model,
        or a small random-weight model package when the catalog is empty."""
        import tempfile

        self.delayDisplay("Starting the whole chain")
        logic = XRayToCTLogic()
        if logic.missingDependencies():
            return self._skip(f"Python packages missing: {logic.missingDependencies()} "
                              "(the XRayToCT module offers to install them)")
        with tempfile.TemporaryDirectory() as folder:
            modelName = logic.smallestModel() or _randomModelPackage(folder)
            ctNode = self._phantomNode()
            drrs = logic.synthesizeDrrs(ctNode, device="cpu", modelName=modelName)
            self.assertTrue(drrs and all(logic.isDrrOf(n, ctNode) for n in drrs.values()))
            self.delayDisplay(f"DRRs at the geometry of {modelName}")

            task = logic.startReconstruction(drrs.get("ap"), drrs.get("lateral"), modelName=modelName,
                                             device="cpu", ctVolumeNode=ctNode, register=False)
            sctNode = task.wait(timeout=600)
        self.assertEqual(task.fraction, 1.0)
        self.assertIn("synthetic", sctNode.GetName())
        self.assertEqual(sctNode.GetAttribute(mrml.ATTRIBUTE_SYNTHETIC), "true")
        self.assertEqual(mrml.volume_from_node(sctNode).array.shape, (64, 64, 64))  # on the CT grid
        self.assertIn("mean", mrml.consistency_of(sctNode))
        self.assertIs(logic.defaultGroundTruth(sctNode), ctNode)
        self.delayDisplay("sCT computed")

        result = logic.compare(sctNode, ctNode)
        rows = mrml.metrics_from_table(result["table"])
        self.assertEqual(len(rows), 4 * 2 * 2)
        self.assertEqual({r["metric"] for r in rows}, {"ssim", "psnr", "cosine", "mae_hu"})
        self.assertEqual({(r["window"], r["region"]) for r in rows},
                         {("brain", "head"), ("brain", "whole"), ("full", "head"), ("full", "whole")})
        self.assertEqual(result["difference"].GetAttribute(mrml.ATTRIBUTE_KIND), mrml.KIND_DIFFERENCE)
        layoutNode = logic.layoutNode()
        if layoutNode is not None:
            self.assertTrue(layoutNode.IsLayoutDescription(mrml.COMPARE_LAYOUT_ID))
        self.delayDisplay("Test passed")


def _randomModelPackage(folder: str, size: int = 32) -> str:
    """A small two-view model package with random weights, for the self-test when no model
    is installed: the registry's ``x2ct_gan`` at a test width (``size``\u00b3 output over the
    256 mm field of view, ``size``\u00b2 DRRs), saved with its spec like a trained one."""
    import os

    import torch

    models = importlib.import_module("XRayToCTLib.models")
    torch.manual_seed(0)
    model = models.build_model("x2ct_gan", {
        "image_size": size, "output_size": size, "output_spacing": 256.0 / size,
        "stem_channels": 8, "growth_rate": 4, "encoder_blocks": [1, 1, 1],
        "decoder_channels": [4, 4, 8, 8], "decoder_blocks": [1, 1, 1, 0], "fusion_blocks": [1, 1, 1, 0]})
    path = os.path.join(folder, "xraytoct_selftest_random.safetensors")
    models.save_package(model, path, metadata={
        "training_data": {"description": "none: random weights (the XRayToCT self-test)"}, "validation": {}})
    return path
