from __future__ import annotations

import shutil

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from fedrad.data.deid import PROFILE, audit_dataset, audit_file, audit_folder, summarize


def test_profile_table_keywords_match_the_dicom_dictionary():
    wrong = [(hex(tag), rule.keyword) for tag, rule in PROFILE.items() if keyword_for_tag(tag) != rule.keyword]

    assert wrong == []
    assert {"PatientName", "AccessionNumber", "DeviceSerialNumber", "StudyInstanceUID"} <= {
        r.keyword for r in PROFILE.values()}  # fmt: skip


def test_ct_small_identifiers_are_found_but_not_copied(testdata):
    path = testdata("CT_small.dcm")

    audit = audit_file(path)

    found = {f.keyword: f for f in audit.findings if not f.in_sequence}
    assert audit.error is None
    assert {"PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "InstitutionName",
            "StationName", "StudyDate", "AccessionNumber"} <= set(found)  # fmt: skip
    assert found["PatientName"].action == "Z" and found["StudyInstanceUID"].action == "U"
    assert not found["PatientName"].empty and found["AccessionNumber"].empty  # present but blank
    assert audit.private_tags > 0 and "PrivateAttributes" in audit.keywords()
    assert audit.burned_in_annotation is None and audit.pixels_need_review
    name = str(pydicom.dcmread(path, stop_before_pixels=True).PatientName)
    assert name and name not in repr(audit)  # the report never holds values


def test_mr_small_operator_and_device_serial(testdata):
    audit = audit_file(testdata("MR_small.dcm"))

    assert {"OperatorsName", "DeviceSerialNumber", "NameOfPhysiciansReadingStudy"} <= audit.keywords()


def test_flags_nested_names_and_other_dates():
    ds = Dataset()
    ds.PatientName = ""
    ds.BurnedInAnnotation = "YES"
    ds.PatientIdentityRemoved = "YES"
    ds.RTPlanDate = "20240101"  # a date the table excerpt does not list
    item = Dataset()
    item.PatientName = "Hidden^Inside"
    ds.ReferencedPatientSequence = [item]

    audit = audit_dataset(ds, "mem")

    by_key = {(f.keyword, f.in_sequence): f for f in audit.findings}
    assert by_key[("PatientName", False)].empty and not by_key[("PatientName", True)].empty
    assert by_key[("RTPlanDate", False)].action == "review"
    assert audit.burned_in_annotation == "YES" and audit.patient_identity_removed == "YES"


def test_folder_summary_counts_files_and_unreadable_ones(testdata, tmp_path, make_dicom):
    shutil.copy(testdata("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(testdata("MR_small.dcm"), tmp_path / "mr.dcm")
    make_dicom(tmp_path / "burned.dcm", np.zeros((4, 4), np.int16), BurnedInAnnotation="YES")
    (tmp_path / "garbage.bin").write_bytes(b"\x00garbage" * 40)

    report = audit_folder(tmp_path)

    summary = report.summary
    assert (summary.num_files, summary.num_unreadable) == (4, 1)
    assert summary.num_with_identifiers == 3 and summary.burned_in_yes == 1 and summary.burned_in_absent == 2
    assert summary.attribute_counts["PatientName"] == 3 and summary.attribute_counts["PatientID"] == 3
    assert summary.num_with_private_tags == 1
    bad = next(a for a in report.files if a.path.endswith("garbage.bin"))
    assert bad.error and "not a DICOM file" in bad.error
    assert summarize([]).num_files == 0
