"""Reading and writing CTs and radiographs with exact geometry (SimpleITK, pydicom).

Everything returned is a :class:`~XRayToCTLib.geometry.Volume` or
:class:`~XRayToCTLib.geometry.Radiograph` in LPS; bad input raises
:class:`~XRayToCTLib.errors.InputError` with one line naming the file and the problem.
Writers never leave a half-written file: every file goes through the one atomic writer,
:func:`atomic_write`. Every JSON the library writes follows the one policy of
:func:`to_jsonable` (non-finite numbers become ``null``).

Modules, one per concern:

* :mod:`.files` -- :func:`atomic_write`, :func:`write_text`, :func:`write_json`,
  :func:`to_jsonable`, :func:`json_text`; the extension tables and small shared helpers.
* :mod:`.hu_check` -- :func:`looks_like_hu`, the "is this a CT in Hounsfield units" test.
* :mod:`.dicom_read` -- DICOM series: scanning, decoding, placing slices in space,
  resampling irregular stacks; :func:`is_dicom_file`, :func:`is_dicom_dir`,
  :func:`list_dicom_series`.
* :mod:`.dicom_write` -- :func:`write_dicom_series`.
* :mod:`.volumes` -- :func:`read_volume` (NIfTI, NRRD, MetaImage, DICOM) and
  :func:`write_volume`; :func:`volume_to_sitk`, :func:`sitk_to_volume`.
* :mod:`.radiographs` -- :func:`read_radiograph` and :func:`write_radiograph`.
"""
from __future__ import annotations

from .dicom_read import (DICOM_CARRY_TAGS, DICOM_INFO_TAGS, is_dicom_dir, is_dicom_file,
                         list_dicom_series, resample_stack)
from .dicom_write import write_dicom_series
from .files import (DICOM_EXTENSIONS, IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, atomic_write, json_text,
                    to_jsonable, write_json, write_text)
from .hu_check import hu_percentile, looks_like_hu
from .radiographs import read_radiograph, write_radiograph
from .volumes import (read_volume, sitk_to_volume, volume_format, volume_to_sitk, write_sitk_image,
                      write_volume)

__all__ = [
    "DICOM_CARRY_TAGS", "DICOM_EXTENSIONS", "DICOM_INFO_TAGS", "IMAGE_EXTENSIONS",
    "VOLUME_EXTENSIONS", "atomic_write", "hu_percentile", "is_dicom_dir", "is_dicom_file",
    "json_text", "list_dicom_series", "looks_like_hu", "read_radiograph",
    "read_volume", "resample_stack", "sitk_to_volume", "to_jsonable", "volume_format",
    "volume_to_sitk", "write_dicom_series", "write_json", "write_radiograph",
    "write_sitk_image", "write_text", "write_volume",
]
