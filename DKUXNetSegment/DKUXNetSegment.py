"""DKUXNetSegment: left-atrium segmentation and fine-tuning with Dual kMaX UX-Net in 3D Slicer.

The Slicer shell over the ``dkuxnet`` core. This file holds only what needs the Slicer
application (qt widgets, ``slicer.app``, ``slicer.modules``); the work is done in
``DKUXNetSegmentLib.logic`` (no qt, tested on slicer-core) and in background ``dkuxnet``
processes, so Slicer never freezes.

Slicer imports this file at start-up whatever its version, so it stays valid Python 3.9 (the
Python of Slicer 5.6 and 5.8) and imports the rest of the extension, which needs Python 3.10+
(Slicer 5.10+), only after the version check (``Testing/test_supported_slicer.py``).
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from DKUXNetSegmentLib.supported import MINIMUM_SLICER, unsupported_reason

SUPPORTED = unsupported_reason() is None
if SUPPORTED:  # on an older Slicer the panel shows unsupported_reason() instead
    from dkuxnet.device import DEVICE_CHOICES, DEVICE_LABELS
    from dkuxnet.errors import InputError
    from dkuxnet.jobs import JobState
    from DKUXNetSegmentLib import slicer_bridge
    from DKUXNetSegmentLib.controller import Controller
    from DKUXNetSegmentLib.logic import (
        MODEL_SOURCES,
        REQUIRED_PACKAGES,
        DKUXNetLogic,
        LabeledPair,
        Parameters,
        default_input_volume,
        missing_packages,
        volume_selector_hidden_ids,
    )

POLL_INTERVAL_MS = 500
MODEL_FILE_FILTERS = ["Model checkpoint (*.pt)"]


# ---------------------------------------------------------------------------------- module
class DKUXNetSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DKUXNet Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DKUXNetSegment contributors"]
        self.parent.helpText = (
            "Segment the left atrium with Dual kMaX UX-Net, and fine-tune the model on your own "
            "labeled and unlabeled scans (semi-supervised). Both run in the background: the "
            "progress bar follows them and Cancel stops them.<br>"
            "<b>Segment</b>: pick a volume and click Segment; the result is a new segmentation "
            "unless you choose one to replace. When the scan shows more than the heart, place a "
            "box (Markups ROI) around the heart and choose it as <i>Region of interest</i>: "
            "only its inside is segmented. On a scan far larger than the model's training "
            "scans, or after a result far too large, the panel says so and offers <i>Place "
            "box</i>: drag the box it adds over the heart. <i>Show uncertainty</i> also shows "
            "where the model is unsure, in colour over the image (a single-network model such "
            "as the bundled one needs Test-time augmentation for it).<br>"
            "<b>Fine-tune</b>: add volumes with their left-atrium segment, optionally unlabeled "
            "volumes, and start; the new model is then used by Segment. Estimate time first "
            "shows how long the chosen iterations take on this computer. <i>Suggest next to "
            "label</i> ranks the unlabeled volumes by the model's uncertainty, most unsure "
            "first.<br>"
            f"Needs 3D Slicer {MINIMUM_SLICER} or newer."
        )
        self.parent.acknowledgementText = (
            "Method: Dual kMaX UX-Net for semi-supervised medical image segmentation "
            "(arXiv 2311.12364, ISBI 2024). Built on PyTorch, MONAI and SimpleITK."
        )


# ---------------------------------------------------------------------------------- widget
class DKUXNetSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: mirrors the parameter node, renders the controller, polls it with a timer.

    What may start, what a job's end does and what each control shows is the logic's
    :class:`~DKUXNetSegmentLib.controller.Controller` (shared with the web page); this class
    only turns clicks into its calls and its view into widgets and dialogs.
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None  # stays None on an unsupported Slicer: no panel, nothing to do
        self._parameterNode = None
        self._updatingGUI = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        if not SUPPORTED:
            message = unsupported_reason(slicer_version=slicer.app.applicationVersion)
            logging.error(message)
            label = qt.QLabel(message)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DKUXNetSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DKUXNetSegmentLogic()
        for device in DEVICE_CHOICES:  # the device list lives in dkuxnet.device only
            self.ui.deviceComboBox.addItem(DEVICE_LABELS[device])

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        # GUI -> parameter node
        for selector in (
            self.ui.inputVolumeSelector,
            self.ui.roiSelector,
            self.ui.outputSegmentationSelector,
        ):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelSourceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.connect(
            "currentPathChanged(QString)", self.updateParameterNodeFromGUI
        )
        self.ui.deviceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.ttaCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.showUncertaintyCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.iterationsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.startFromCurrentModelCheckBox.toggled.connect(self.updateParameterNodeFromGUI)

        # actions
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.segmentCancelButton.clicked.connect(self.onSegmentCancel)
        self.ui.placeSegmentRegionButton.clicked.connect(self.onPlaceSegmentRegion)
        self.ui.addPairButton.clicked.connect(self.onAddPair)
        self.ui.removePairButton.clicked.connect(self.onRemovePair)
        self.ui.addUnlabeledButton.clicked.connect(self.onAddUnlabeled)
        self.ui.removeUnlabeledButton.clicked.connect(self.onRemoveUnlabeled)
        self.ui.suggestNextButton.clicked.connect(self.onSuggestNext)
        self.ui.suggestNextCancelButton.clicked.connect(self.onSuggestNextCancel)
        self.ui.rankingTableWidget.cellDoubleClicked.connect(self.onRankingDoubleClicked)
        self.ui.estimateTimeButton.clicked.connect(self.onEstimateTime)
        self.ui.fineTuneStartButton.clicked.connect(self.onFineTuneStart)
        self.ui.fineTuneCancelButton.clicked.connect(self.onFineTuneCancel)
        self.ui.fineTuneResumeButton.clicked.connect(self.onFineTuneResume)
        self.ui.plotSelectorComboBox.currentIndexChanged.connect(self.showPlot)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.onTimer)
        self.initializeParameterNode()

    def cleanup(self):
        """Module closed (application exit): stop the jobs; they must not outlive Slicer."""
        if self.logic is None:
            return
        self.timer.stop()
        self.logic.controller.stop_all(grace_s=5.0)
        self.removeObservers()

    def enter(self):
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self):
        # The timer keeps polling the jobs while the module is hidden; only the GUI rests.
        self._observeParameterNode(False)

    def onNodeAdded(self, caller, event):
        # after the event: a new uncertainty map gets its attribute just after it is added
        qt.QTimer.singleShot(0, self.hideModuleMapsFromSelectors)

    def hideModuleMapsFromSelectors(self):
        """The uncertainty maps are scalar volumes, but no image to segment or train on."""
        hidden = volume_selector_hidden_ids(slicer.mrmlScene)
        for selector in (
            self.ui.inputVolumeSelector,
            self.ui.pairVolumeSelector,
            self.ui.unlabeledVolumeSelector,
        ):
            selector.sortFilterProxyModel().hiddenNodeIDs = hidden

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # parameter node <-> GUI
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        params = self._parameters()
        self.hideModuleMapsFromSelectors()
        legacyMessage = params.convert_legacy_pairs()  # a scene saved by an earlier version
        if legacyMessage:
            slicer.util.warningDisplay(legacyMessage, windowTitle="DKUXNet Segment")
        if params.input_volume is None:
            firstVolume = default_input_volume(slicer.mrmlScene)  # no label or uncertainty map
            if firstVolume is not None:
                params.input_volume = firstVolume

    def _parameters(self):
        return self.logic.parameters()

    def setParameterNode(self, inputParameterNode):
        self._observeParameterNode(False)
        self._parameterNode = inputParameterNode
        self._observeParameterNode(True)
        self.updateGUIFromParameterNode()

    def _observeParameterNode(self, observe):
        """Start or stop following the parameter node; doing either twice is harmless.

        VTKObservationMixin warns when asked to remove an observer it does not have, which
        exit() followed by enter() used to do.
        """
        node, event = self._parameterNode, vtk.vtkCommand.ModifiedEvent
        method = self.updateGUIFromParameterNode
        if node is None or self.hasObserver(node, event, method) == observe:
            return
        if observe:
            self.addObserver(node, event, method)
        else:
            self.removeObserver(node, event, method)

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            params = Parameters(self._parameterNode)
            self.ui.inputVolumeSelector.setCurrentNode(params.input_volume)
            self.ui.roiSelector.setCurrentNode(params.roi)
            self.ui.outputSegmentationSelector.setCurrentNode(params.output_segmentation)
            self.ui.modelSourceComboBox.currentIndex = MODEL_SOURCES.index(params.model_source)
            self._setModelPathBrowsing(params.model_source)
            self.ui.modelPathLineEdit.currentPath = params.model_path
            self.ui.modelPathLineEdit.enabled = params.model_source != "default"
            self.ui.deviceComboBox.currentIndex = DEVICE_CHOICES.index(params.device)
            self.ui.ttaCheckBox.checked = params.tta
            self.ui.showUncertaintyCheckBox.checked = params.show_uncertainty
            self.ui.iterationsSpinBox.value = params.iterations
            self.ui.startFromCurrentModelCheckBox.checked = params.start_from_current_model
            self._fillPairsTable(params.labeled_pairs)
            self.ui.unlabeledListWidget.clear()
            for node in params.unlabeled_volumes:
                self.ui.unlabeledListWidget.addItem(node.GetName())
            self._render()
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUI:
            return
        wasModified = self._parameterNode.StartModify()
        params = Parameters(self._parameterNode)
        params.input_volume = self.ui.inputVolumeSelector.currentNode()
        params.roi = self.ui.roiSelector.currentNode()
        params.output_segmentation = self.ui.outputSegmentationSelector.currentNode()
        params.model_source = MODEL_SOURCES[self.ui.modelSourceComboBox.currentIndex]
        params.model_path = self.ui.modelPathLineEdit.currentPath
        params.device = DEVICE_CHOICES[self.ui.deviceComboBox.currentIndex]
        params.tta = self.ui.ttaCheckBox.checked
        params.show_uncertainty = self.ui.showUncertaintyCheckBox.checked
        params.iterations = self.ui.iterationsSpinBox.value
        params.start_from_current_model = self.ui.startFromCurrentModelCheckBox.checked
        self._parameterNode.EndModify(wasModified)

    def _setModelPathBrowsing(self, source):
        """Browse picks a folder for a run and a .pt file for a checkpoint.

        ctkPathLineEdit opens a file dialog whenever its filters include Files, as CTK's default
        does, and a folder dialog otherwise (ctkPathLineEdit::browse).
        """
        lineEdit = self.ui.modelPathLineEdit
        if source == "run":
            lineEdit.filters = ctk.ctkPathLineEdit.Dirs
            lineEdit.nameFilters = []
        else:
            lineEdit.filters = ctk.ctkPathLineEdit.Files
            lineEdit.nameFilters = MODEL_FILE_FILTERS

    def _fillPairsTable(self, pairs):
        table = self.ui.pairsTableWidget
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            segment = pair.segmentation.GetSegmentation().GetSegment(pair.segment_id)
            texts = [
                pair.volume.GetName(),
                pair.segmentation.GetName(),
                segment.GetName() if segment else "?",
            ]
            for column, text in enumerate(texts):
                table.setItem(row, column, qt.QTableWidgetItem(text))

    def _render(self):
        """Show the controller's view: buttons, progress bars, status lines, advice, ranking."""
        view = self.logic.controller.view()
        ui = self.ui
        ui.segmentButton.enabled = view.can_segment
        self._renderTask(view.segment, ui.segmentCancelButton, ui.segmentStatusLabel)
        ui.segmentProgressBar.value = view.segment.progress
        # a scan of the whole chest, or a result far too large: say what to do, offer the box
        ui.segmentRegionAdviceLabel.text = view.region_advice
        ui.segmentRegionAdviceLabel.visible = bool(view.region_advice)
        ui.placeSegmentRegionButton.visible = bool(view.region_advice)
        ui.placeSegmentRegionButton.enabled = view.can_place_box
        ui.suggestNextButton.enabled = view.can_rank  # with no volumes it says what to do
        self._renderTask(view.ranking, ui.suggestNextCancelButton, ui.rankingStatusLabel)
        ui.rankingTableWidget.setRowCount(len(view.ranked))
        for row, ranked in enumerate(view.ranked):
            ui.rankingTableWidget.setItem(row, 0, qt.QTableWidgetItem(ranked.name))
            ui.rankingTableWidget.setItem(row, 1, qt.QTableWidgetItem(ranked.score_text))
        ui.estimateTimeButton.enabled = view.can_estimate
        ui.estimateTimeLabel.text = view.estimate_text
        ui.fineTuneStartButton.enabled = view.can_fine_tune
        self._renderTask(view.fine_tune, ui.fineTuneCancelButton, ui.fineTuneStatusLabel)
        ui.fineTuneProgressBar.value = view.fine_tune.progress
        ui.fineTuneResumeButton.enabled = view.can_resume

    @staticmethod
    def _renderTask(taskView, cancelButton, statusLabel):
        cancelButton.enabled = taskView.running
        statusLabel.text = taskView.status

    # fine-tune inputs
    def onAddPair(self):
        volume = self.ui.pairVolumeSelector.currentNode()
        segmentation = self.ui.pairSegmentSelector.currentNode()
        segmentId = self.ui.pairSegmentSelector.currentSegmentID()
        if volume is None or segmentation is None or not segmentId:
            slicer.util.warningDisplay(
                "Choose a volume, a segmentation and its left-atrium segment."
            )
            return
        params = self._parameters()
        params.labeled_pairs = [*params.labeled_pairs, LabeledPair(volume, segmentation, segmentId)]

    def onRemovePair(self):
        rows = {index.row() for index in self.ui.pairsTableWidget.selectedIndexes()}
        params = self._parameters()
        params.labeled_pairs = [p for i, p in enumerate(params.labeled_pairs) if i not in rows]

    def onAddUnlabeled(self):
        volume = self.ui.unlabeledVolumeSelector.currentNode()
        params = self._parameters()
        if volume is not None and volume not in params.unlabeled_volumes:
            params.unlabeled_volumes = [*params.unlabeled_volumes, volume]

    def onRemoveUnlabeled(self):
        rows = {
            self.ui.unlabeledListWidget.row(item)
            for item in self.ui.unlabeledListWidget.selectedItems()
        }
        params = self._parameters()
        params.unlabeled_volumes = [
            v for i, v in enumerate(params.unlabeled_volumes) if i not in rows
        ]

    # actions
    def _start(self, message, start):
        """``start()`` (a controller action) once the dependencies are there; a failure is
        shown as one error dialog. Returns its result, or None when it did not start."""
        if not self.logic.ensureDependencies():
            return None
        result = self._startShowingErrors(message, start)
        if result is not None:
            self.timer.start()
        return result

    def _startShowingErrors(self, message, start):
        """``start()``, with a failure shown as one error dialog; returns its result or None.

        Unlike slicer.util.tryWithErrorDisplay this does not re-raise (which skipped the
        button refresh and printed a traceback for a mere wrong choice of the user): an
        InputError says what to change; anything else also gets the traceback as details
        and in the log.
        """
        try:
            with slicer.util.WaitCursor():
                return start()
        except InputError as exc:
            slicer.util.errorDisplay(f"{message}\n\n{exc}")
        except Exception as exc:  # a bug or a broken installation: keep the details
            logging.error(message, exc_info=True)
            slicer.util.errorDisplay(f"{message}\n\n{exc}", detailedText=traceback.format_exc())
        finally:
            self._render()
        return None

    def onSegment(self):
        self._start("Could not start segmentation.", self.logic.controller.segment)

    def onSegmentCancel(self):
        self.logic.controller.cancel_segment()

    def onPlaceSegmentRegion(self):
        """The 'Segment region' box at the volume's centre, chosen for Segment, handles on.

        Editing, not Markups place mode: clicks in place mode would define the box anew (or
        a new ROI once this one is complete: vtkMRMLMarkupsROINode::
        UpdateBoxROIFromControlPoints, vtkMRMLMarkupsDisplayableManager::
        GetWidgetForPlacement), and markups logic's StartPlaceMode places point lists only.
        The box comes with its handles on (as Crop Volume's ROI); the user drags it over the
        heart in the slice views, which jump to its centre. The selector follows the parameter
        node, where the controller chose the box for Segment.
        """
        roi = self._startShowingErrors(
            "Could not place the box.", self.logic.controller.place_segment_region
        )
        if roi is not None:
            centre = [0.0, 0.0, 0.0]
            roi.GetCenterWorld(centre)
            slicer.modules.markups.logic().JumpSlicesToLocation(*centre, True)

    def onSuggestNext(self):
        self._start("Could not rank the unlabeled volumes.", self.logic.controller.suggest_next)

    def onSuggestNextCancel(self):
        self.logic.controller.cancel_suggest_next()

    def onRankingDoubleClicked(self, row, column):
        """Show the ranked volume in the slice views."""
        node = self.logic.controller.ranked_volume(row)
        if node is not None:
            slicer.util.setSliceViewerLayers(background=node, fit=True)

    def onEstimateTime(self):
        self._start("Could not estimate the fine-tuning time.", self.logic.controller.estimate_time)

    def onFineTuneStart(self):
        if self._start("Could not start fine-tuning.", self.logic.controller.start_fine_tune):
            self.showPlot()

    def onFineTuneResume(self):
        if self._start("Could not resume fine-tuning.", self.logic.controller.resume_fine_tune):
            self.showPlot()

    def onFineTuneCancel(self):
        self.logic.controller.cancel_fine_tune()

    def showPlot(self, *args):
        task = self.logic.controller.fine_tune_task
        if task is None:
            return
        plots = task.plots
        chart = (
            plots.loss_chart if self.ui.plotSelectorComboBox.currentIndex == 0 else plots.dice_chart
        )
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    # polling
    def onTimer(self):
        for outcome in self.logic.controller.poll():
            self._announce(outcome)
        if not self.logic.controller.running():
            self.timer.stop()
        self._render()

    @staticmethod
    def _announce(outcome):
        """A job ended: show its result in the views, and say so as loudly as it asks."""
        task = outcome.task
        if outcome.action == "segment" and task.state is JobState.COMPLETED:
            volume = task.scene.GetNodeByID(task.volume_node_id)
            slicer.util.setSliceViewerLayers(background=volume)
            slicer.util.resetThreeDViews()  # centre the 3D view on the new result
        if outcome.level == "error":
            slicer.util.errorDisplay(outcome.text, detailedText=outcome.details)
        elif outcome.level == "warning":  # e.g. far too large: the scan shows more than the heart
            slicer.util.warningDisplay("\n\n".join(outcome.warnings), windowTitle="DKUXNet Segment")
        elif outcome.level == "info":
            slicer.util.infoDisplay(outcome.message)


# ---------------------------------------------------------------------------------- logic
class DKUXNetSegmentLogic(ScriptedLoadableModuleLogic):
    """Slicer-application side of the logic: folders, PythonSlicer, dependency installation.

    Everything else is delegated to :class:`DKUXNetSegmentLib.logic.DKUXNetLogic` (the jobs)
    and :class:`DKUXNetSegmentLib.controller.Controller` (the panel's current jobs, what may
    start, what their ends do, what the panel shows), which the web page uses too.
    """

    def __init__(self, logic=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.dependenciesChecked = False
        if logic is None:
            python = shutil.which("PythonSlicer")
            if python is None:
                logging.warning("PythonSlicer not found on PATH; using the current interpreter")
            userData = Path(slicer.app.slicerUserSettingsFilePath).parent / "DKUXNetSegment"
            logic = DKUXNetLogic(
                slicer.mrmlScene,
                jobs_dir=Path(slicer.app.temporaryPath) / "DKUXNetSegment",
                runs_dir=userData / "runs",  # kept: fine-tuned models live here
                python_executable=python,
            )
        self.logic = logic
        # The panel's current jobs; it reads the parameter node anew on every use, so a job
        # that ends after the scene was closed (a fine-tune to adopt) finds the new one.
        self.controller = Controller(logic, self.parameters)

    def parameters(self):
        """The module's parameter node (in the current scene) as a typed view."""
        return Parameters(self.getParameterNode())

    def segment(
        self,
        volumeNode,
        model,
        device="auto",
        tta=False,
        segmentationNode=None,
        uncertainty=False,
        roiNode=None,
    ):
        """Segment in the background; ``roiNode`` (a markups ROI) limits it to that box.

        For scripts and the self-test; the panel goes through :attr:`controller`."""
        return self.logic.start_segment(
            volumeNode,
            model,
            device,
            tta,
            segmentationNode,
            uncertainty=uncertainty,
            roi_node=roiNode,
        )

    def ensureDependencies(self):
        """Check torch/monai/SimpleITK; offer to install the missing ones. True when ready."""
        if self.dependenciesChecked:
            return True
        missing = missing_packages()
        if not missing:
            self.dependenciesChecked = True
            return True
        requirements = [REQUIRED_PACKAGES[name] for name in missing]
        if not slicer.util.confirmOkCancelDisplay(
            "DKUXNet needs these Python packages, which are not installed:\n\n"
            + "\n".join(requirements)
            + "\n\nInstall them now? This downloads about 1-3 GB and may take several minutes.",
            "Install dependencies",
        ):
            return False
        try:
            with slicer.util.WaitCursor():
                self.installDependencies(missing)
        except Exception as exc:  # any installer failure becomes one clear message
            slicer.util.errorDisplay(
                "Installing the dependencies failed. Install them from the Python console with\n"
                f"slicer.util.pip_install({' '.join(requirements)!r})\nand restart Slicer.",
                detailedText=str(exc),
            )
            return False
        still = missing_packages()
        if still:
            slicer.util.errorDisplay(
                f"Still missing after installation: {', '.join(still)}. Restart Slicer and try again."
            )
            return False
        self.dependenciesChecked = True
        return True

    @staticmethod
    def installDependencies(missing):
        """torch through the PyTorch extension when it is installed (it picks the CUDA build), else pip."""
        if "torch" in missing:
            try:
                import PyTorchUtils

                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    torchLogic.installTorch(
                        askConfirmation=False,
                        torchVersionRequirement=REQUIRED_PACKAGES["torch"][len("torch") :],
                    )
            except ImportError:
                slicer.util.pip_install(REQUIRED_PACKAGES["torch"])
        others = [REQUIRED_PACKAGES[name] for name in missing if name != "torch"]
        if others:
            slicer.util.pip_install(" ".join(others))


# ---------------------------------------------------------------------------------- test
class DKUXNetSegmentTest(ScriptedLoadableModuleTest):
    """Self-test: a synthetic left-atrium phantom segmented with the bundled model.

    It checks the chain inside Slicer (dependencies, the PythonSlicer child, the bundled model,
    the import onto the volume's grid) and that the segment lies in the phantom's atrium (a
    flipped axis or a shift would put it outside). It does not check the model's accuracy: the
    bundled model was trained on real LA MRI and undersegments this phantom (Dice 0.44 with the
    same chain on slicer-core; the model card reports accuracy on real scans). The former
    Dice > 0.7 floor could therefore never pass.
    """

    INSIDE_FLOOR = 0.9  # share of the segment's voxels inside the phantom's atrium (measured 1.0)
    PHANTOM_SHAPE = (64, 64, 64)
    TIMEOUT_S = 600

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        if not SUPPORTED:
            self.delayDisplay(unsupported_reason(slicer_version=slicer.app.applicationVersion))
            return
        self.setUp()
        self.test_SegmentPhantom()

    def test_SegmentPhantom(self):
        import numpy as np

        from dkuxnet.resources import default_model_path

        model = default_model_path()
        if model is None:
            self.delayDisplay(
                "No bundled model in this installation; skipping the segmentation test."
            )
            return
        missing = missing_packages()
        if missing:
            self.delayDisplay(
                f"Not installed: {', '.join(missing)}; skipping the segmentation test."
            )
            return
        logic = DKUXNetSegmentLogic()
        from dkuxnet.synthetic import make_phantom

        image, label = make_phantom(self.PHANTOM_SHAPE, seed=7)
        volumeNode = slicer_bridge.add_volume_node(slicer.mrmlScene, image, "LA phantom")
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        self.delayDisplay("Segmenting the phantom in the background")
        task = logic.segment(volumeNode, model, device="auto")
        deadline = time.monotonic() + self.TIMEOUT_S
        while not task.state.is_final and time.monotonic() < deadline:
            task.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertEqual(task.state, JobState.COMPLETED, task.error)

        segmentationNode = task.result
        self.assertIsNotNone(segmentationNode)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(
            slicer_bridge.LEFT_ATRIUM
        )
        self.assertTrue(segmentId)
        predicted = slicer_bridge.export_segment(segmentationNode, segmentId, volumeNode)
        self.assertTrue(predicted.same_geometry(image), predicted.geometry_differences(image))
        truth = label.array > 0
        segment = predicted.array > 0
        self.assertGreater(segment.sum(), 0, "the segment is empty")
        overlap = np.logical_and(segment, truth).sum()
        inside = overlap / segment.sum()
        dice = 2.0 * overlap / (segment.sum() + truth.sum())
        self.delayDisplay(
            f"{100 * inside:.0f}% of the segment inside the phantom's atrium; Dice {dice:.3f}"
        )
        self.assertGreater(inside, self.INSIDE_FLOOR)
        self.delayDisplay("Test passed")
