"""MRML volume, labelmap and segmentation nodes -> SimpleITK images in LPS world coordinates.

Slicer stores a voxel grid as vtkImageData plus an IJK-to-RAS matrix (and possibly a parent
transform); SimpleITK wants origin, spacing and a direction matrix in LPS. RAS = LPS with x and
y negated. No Qt here: this file runs on a bare slicer-core scene.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

import slicer

# RAS <-> LPS: negate x and y (the matrix is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
LIVER_SEGMENT_KEYWORDS = ("liver", "hepar")


def inputError(message: str) -> Exception:
    """The trainer's InputError (imported lazily so this file loads without it)."""
    from wsp_cirrhosis.inference import InputError

    return InputError(message)


def rasToLps(point) -> tuple[float, float, float]:
    """(R, A, S) mm -> (L, P, S) mm, or back: the same sign flip both ways."""
    x, y, z = (float(v) for v in point)
    return (-x, -y, z)


lpsToRas = rasToLps


def parentToWorldMatrix(node) -> np.ndarray:
    """4x4 matrix from the node's own coordinates to world RAS (identity without a transform).

    Raises:
        InputError: the node sits under a non-linear transform (harden it first).
    """
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise inputError(
            f"'{node.GetName()}' is under a non-linear transform ('{transformNode.GetName()}'); "
            "harden the transform (Data module, right-click > Harden transform) and apply again"
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return _numpyFromVtkMatrix(matrix)


def ijkToWorldRasMatrix(volumeNode) -> np.ndarray:
    """4x4 IJK -> world RAS matrix of a volume node, its parent transform included."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return parentToWorldMatrix(volumeNode) @ _numpyFromVtkMatrix(matrix)


def imageFromArray(arrayKJI: np.ndarray, ijkToRas: np.ndarray, name: str = "image") -> sitk.Image:
    """SimpleITK image from a (K, J, I) array and the 4x4 IJK -> RAS matrix of voxel (0, 0, 0).

    Raises:
        InputError: the matrix is singular or sheared (SimpleITK needs an orthogonal grid).
    """
    linear = np.asarray(ijkToRas, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
        raise inputError(f"'{name}': degenerate IJK-to-RAS matrix (zero spacing)")
    directionLps = RAS_TO_LPS @ (linear / spacing)
    if not np.allclose(directionLps.T @ directionLps, np.eye(3), atol=1e-4):
        raise inputError(f"'{name}': sheared voxel grid; resample it (Resample Scalar Volume) and apply again")
    image = sitk.GetImageFromArray(np.ascontiguousarray(arrayKJI))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin(rasToLps(np.asarray(ijkToRas, dtype=float)[:3, 3]))
    image.SetDirection([float(v) for v in directionLps.ravel()])
    return image


def volumeToImage(volumeNode) -> sitk.Image:
    """CT volume node -> SimpleITK image with the node's intensities and world geometry (LPS).

    Raises:
        InputError: no node, a labelmap, no voxels, or more than one component per voxel
            (RGB, vector or tensor volumes are not CT).
    """
    if volumeNode is None:
        raise inputError("no CT volume selected; load a CT (e.g. Sample Data > CTLiver) and select it")
    name = volumeNode.GetName()
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise inputError(f"'{name}' is a {volumeNode.GetClassName()}, not a CT volume; select the CT scan as input volume")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise inputError(f"'{name}' holds no voxels")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise inputError(
            f"'{name}' has {imageData.GetNumberOfScalarComponents()} components per voxel (colour or vector image); "
            "a scalar CT volume in Hounsfield units is required"
        )
    dims = imageData.GetDimensions()
    if min(dims) < 2:
        raise inputError(f"'{name}' is a single slice (size {dims[0]} x {dims[1]} x {dims[2]}); a 3D CT volume is required")
    ijkToRas = _fromExtentStart(ijkToWorldRasMatrix(volumeNode), imageData.GetExtent())
    return imageFromArray(_arrayFromImageData(imageData), ijkToRas, name)


def maskToImage(maskNode, segmentId: str | None = None, liverLabel: int = 0) -> sitk.Image:
    """Liver mask node -> binary uint8 SimpleITK image (1 = liver) on the mask's own grid.

    The trainer's `align_mask` later puts it on the CT grid, as for a mask file.

    Args:
        maskNode: vtkMRMLSegmentationNode or vtkMRMLLabelMapVolumeNode (a scalar volume is
            accepted as a labelmap).
        segmentId: segment of a segmentation node; None picks the liver segment by name.
        liverLabel: voxel value of the liver in a labelmap; 0 accepts a map with one label.

    Raises:
        InputError: no node, unknown or empty segment, multi-label map without `liverLabel`.
    """
    if maskNode is None:
        raise inputError(
            "no liver mask selected; select a segmentation (or labelmap) of the liver, e.g. made with "
            "the TotalSegmentator extension or the Segment Editor"
        )
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        return _segmentToImage(maskNode, segmentId)
    if not maskNode.IsA("vtkMRMLScalarVolumeNode"):
        raise inputError(f"'{maskNode.GetName()}' ({maskNode.GetClassName()}) is not a segmentation or labelmap")
    imageData = maskNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0 or imageData.GetNumberOfScalarComponents() != 1:
        raise inputError(f"'{maskNode.GetName()}' holds no single-component voxels; it cannot be a liver mask")
    ijkToRas = _fromExtentStart(ijkToWorldRasMatrix(maskNode), imageData.GetExtent())
    labels = imageFromArray(_arrayFromImageData(imageData), ijkToRas, maskNode.GetName())
    return _binarize(labels, liverLabel, maskNode.GetName())


def listSegments(segmentationNode) -> list[tuple[str, str]]:
    """(segment id, segment name) of every segment, in display order."""
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        return []
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return [(sid, segmentation.GetSegment(sid).GetName()) for sid in ids]


def findLiverSegmentId(segmentationNode) -> str | None:
    """The segment whose name mentions the liver, else the only segment, else None."""
    segments = listSegments(segmentationNode)
    for sid, name in segments:
        if any(word in name.lower() for word in LIVER_SEGMENT_KEYWORDS):
            return sid
    return segments[0][0] if len(segments) == 1 else None


def _segmentToImage(segmentationNode, segmentId: str | None) -> sitk.Image:
    name = segmentationNode.GetName()
    segments = dict(listSegments(segmentationNode))
    if segmentId is None or segmentId == "":
        segmentId = findLiverSegmentId(segmentationNode)
        if segmentId is None:
            found = ", ".join(segments.values()) or "none"
            raise inputError(f"'{name}': no segment named 'liver' (segments: {found}); pick the liver segment")
    if segmentId not in segments:
        raise inputError(f"'{name}' has no segment '{segmentId}' (segments: {', '.join(segments.values()) or 'none'})")
    source = _withBinaryLabelmap(segmentationNode)
    labelmap = slicer.vtkOrientedImageData()
    if not source.GetBinaryLabelmapRepresentation(segmentId, labelmap) or labelmap.GetNumberOfPoints() == 0:
        raise inputError(f"'{name}': segment '{segments[segmentId]}' is empty")
    imageToNode = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(imageToNode)
    ijkToRas = parentToWorldMatrix(segmentationNode) @ _numpyFromVtkMatrix(imageToNode)
    ijkToRas = _fromExtentStart(ijkToRas, labelmap.GetExtent())
    array = (_arrayFromImageData(labelmap) != 0).astype(np.uint8)
    if not array.any():
        raise inputError(f"'{name}': segment '{segments[segmentId]}' is empty")
    return imageFromArray(array, ijkToRas, f"{name}/{segments[segmentId]}")


def _withBinaryLabelmap(segmentationNode):
    """The node itself when it holds binary labelmaps, else an unsaved copy converted to them.

    The user's node is never converted: a refused input must leave it exactly as it was
    (representations, undo state, file format when saved).

    Raises:
        InputError: the segmentation cannot be converted to a binary labelmap.
    """
    labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if segmentationNode.GetSegmentation().ContainsRepresentation(labelmapName):
        return segmentationNode
    copy = slicer.vtkMRMLSegmentationNode()  # never added to a scene
    copy.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
    if not copy.GetSegmentation().CreateRepresentation(labelmapName) or \
            not copy.GetSegmentation().ContainsRepresentation(labelmapName):
        raise inputError(f"'{segmentationNode.GetName()}': cannot convert the segmentation to a binary labelmap")
    return copy


def _binarize(labels: sitk.Image, liverLabel: int, name: str) -> sitk.Image:
    from wsp_cirrhosis.inference import binarize_mask

    if liverLabel == 0:
        values = np.unique(sitk.GetArrayViewFromImage(labels))
        values = values[values != 0]
        if len(values) > 1:
            shown = ", ".join(str(v) for v in values[:12])
            raise inputError(f"'{name}' holds several labels ({shown}); set 'Liver label' to the liver's value")
    return binarize_mask(labels, liverLabel or None, name)


def _fromExtentStart(ijkToRas: np.ndarray, extent) -> np.ndarray:
    """Matrix whose voxel (0, 0, 0) is the first stored voxel: an extent need not start at 0."""
    shifted = np.array(ijkToRas, dtype=float)
    shifted[:3, 3] = (shifted @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    return shifted


def _arrayFromImageData(imageData) -> np.ndarray:
    """(K, J, I) numpy copy of a single-component vtkImageData's voxels."""
    dims = imageData.GetDimensions()
    flat = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0]).copy()


def _numpyFromVtkMatrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


# Relevance map display: a perceptually ordered map that stays readable over grey CT, the map at
# 40% opacity, values below 0.15 of the patient's peak left transparent (the CT shows through).
SALIENCY_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
SALIENCY_RANGE = (0.0, 1.0)
SALIENCY_LOWER_THRESHOLD = 0.15
SALIENCY_OPACITY = 0.4


def imageToVolumeNode(scene, image: sitk.Image, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node in world RAS (no parent transform) holding a SimpleITK image (LPS)."""
    node = scene.AddNewNodeByClass(className, name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    direction = RAS_TO_LPS @ np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = rasToLps(image.GetOrigin())  # LPS <-> RAS is its own inverse
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c] * image.GetSpacing()[c])
        matrix.SetElement(r, 3, origin[r])
    node.SetIJKToRASMatrix(matrix)
    return node


def loadSaliencyVolume(scene, path, volumeNode):
    """saliency.nii.gz of a prediction -> a scalar volume node beside the CT, set up for showing
    as a coloured foreground (colour map, window 0..1, low values transparent)."""
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    name = f"{volumeNode.GetName()} WSP relevance" if volumeNode is not None else "WSP relevance"
    node = imageToVolumeNode(scene, image, name)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        if scene.GetNodeByID(SALIENCY_COLOR_NODE_ID) is not None:
            display.SetAndObserveColorNodeID(SALIENCY_COLOR_NODE_ID)
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(*SALIENCY_RANGE)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(SALIENCY_LOWER_THRESHOLD)
        display.SetUpperThreshold(SALIENCY_RANGE[1])
    return node
