"""De-identification audit of DICOM files, after the PS3.15 Basic Application Level Confidentiality Profile.

It lists, per file, which attributes that carry identifiers are present (never their values, so
the report itself can be shared with a privacy officer), the Burned In Annotation flag, and a
summary over files. It reports; it does not change files.

Example:
    >>> from pydicom.data import get_testdata_file
    >>> audit = audit_file(get_testdata_file("CT_small.dcm", download=False))
    >>> "PatientName" in audit.keywords()
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One row of the profile table: the tag, its keyword, the Basic Profile action, a category."""

    group: int
    element: int
    keyword: str
    action: str
    category: str


# PS3.15 Annex E, Table E.1-1 "Application Level Confidentiality Profile Attributes", column
# "Basic Prof." (DICOM 2024b, https://dicom.nema.org/medical/dicom/current/output/html/part15.html
# #table_E.1-1). An excerpt: the attributes common in imaging objects; the full table has ~600
# rows. Actions: X remove; Z empty or dummy; D dummy value; U new UID kept consistent; X/Z/D etc.
# mean the strongest that keeps the object valid for its IOD.
_TABLE: tuple[tuple[int, int, str, str, str], ...] = (
    # patient
    (0x0010, 0x0010, "PatientName", "Z", "patient"),
    (0x0010, 0x0020, "PatientID", "Z", "patient"),
    (0x0010, 0x0021, "IssuerOfPatientID", "X", "patient"),
    (0x0010, 0x0030, "PatientBirthDate", "Z", "patient"),
    (0x0010, 0x0032, "PatientBirthTime", "X", "patient"),
    (0x0010, 0x0040, "PatientSex", "Z", "patient"),
    (0x0010, 0x0050, "PatientInsurancePlanCodeSequence", "X", "patient"),
    (0x0010, 0x1000, "OtherPatientIDs", "X", "patient"),
    (0x0010, 0x1001, "OtherPatientNames", "X", "patient"),
    (0x0010, 0x1002, "OtherPatientIDsSequence", "X", "patient"),
    (0x0010, 0x1005, "PatientBirthName", "X", "patient"),
    (0x0010, 0x1010, "PatientAge", "X", "patient"),
    (0x0010, 0x1020, "PatientSize", "X", "patient"),
    (0x0010, 0x1030, "PatientWeight", "X", "patient"),
    (0x0010, 0x1040, "PatientAddress", "X", "patient"),
    (0x0010, 0x1060, "PatientMotherBirthName", "X", "patient"),
    (0x0010, 0x1080, "MilitaryRank", "X", "patient"),
    (0x0010, 0x1081, "BranchOfService", "X", "patient"),
    (0x0010, 0x1090, "MedicalRecordLocator", "X", "patient"),
    (0x0010, 0x2000, "MedicalAlerts", "X", "patient"),
    (0x0010, 0x2110, "Allergies", "X", "patient"),
    (0x0010, 0x2150, "CountryOfResidence", "X", "patient"),
    (0x0010, 0x2152, "RegionOfResidence", "X", "patient"),
    (0x0010, 0x2154, "PatientTelephoneNumbers", "X", "patient"),
    (0x0010, 0x2160, "EthnicGroup", "X", "patient"),
    (0x0010, 0x2180, "Occupation", "X", "patient"),
    (0x0010, 0x21A0, "SmokingStatus", "X", "patient"),
    (0x0010, 0x21B0, "AdditionalPatientHistory", "X", "patient"),
    (0x0010, 0x21C0, "PregnancyStatus", "X", "patient"),
    (0x0010, 0x21D0, "LastMenstrualDate", "X", "patient"),
    (0x0010, 0x21F0, "PatientReligiousPreference", "X", "patient"),
    (0x0010, 0x4000, "PatientComments", "X", "patient"),
    (0x0038, 0x0010, "AdmissionID", "X", "patient"),
    (0x0038, 0x0300, "CurrentPatientLocation", "X", "patient"),
    (0x0038, 0x0400, "PatientInstitutionResidence", "X", "patient"),
    (0x0038, 0x0500, "PatientState", "X", "patient"),
    # study, request and free text
    (0x0008, 0x0050, "AccessionNumber", "Z", "study"),
    (0x0020, 0x0010, "StudyID", "Z", "study"),
    (0x0008, 0x1030, "StudyDescription", "X", "study"),
    (0x0008, 0x103E, "SeriesDescription", "X", "study"),
    (0x0008, 0x1080, "AdmittingDiagnosesDescription", "X", "study"),
    (0x0008, 0x1120, "ReferencedPatientSequence", "X", "study"),
    (0x0018, 0x1030, "ProtocolName", "X/D", "study"),
    (0x0018, 0x4000, "AcquisitionComments", "X", "study"),
    (0x0020, 0x4000, "ImageComments", "X", "study"),
    (0x0032, 0x1060, "RequestedProcedureDescription", "X/Z", "study"),
    (0x0032, 0x4000, "StudyComments", "X", "study"),
    (0x0040, 0x0253, "PerformedProcedureStepID", "X", "study"),
    (0x0040, 0x0254, "PerformedProcedureStepDescription", "X", "study"),
    (0x0040, 0x0275, "RequestAttributesSequence", "X", "study"),
    (0x0040, 0x1001, "RequestedProcedureID", "X", "study"),
    (0x0040, 0x2016, "PlacerOrderNumberImagingServiceRequest", "Z", "study"),
    (0x0040, 0x2017, "FillerOrderNumberImagingServiceRequest", "Z", "study"),
    (0x0040, 0xA730, "ContentSequence", "X", "study"),
    (0x0400, 0x0561, "OriginalAttributesSequence", "X", "study"),
    # institution and people
    (0x0008, 0x0080, "InstitutionName", "X/Z/D", "institution"),
    (0x0008, 0x0081, "InstitutionAddress", "X", "institution"),
    (0x0008, 0x0082, "InstitutionCodeSequence", "X/Z/D", "institution"),
    (0x0008, 0x1040, "InstitutionalDepartmentName", "X", "institution"),
    (0x0008, 0x0090, "ReferringPhysicianName", "Z", "person"),
    (0x0008, 0x0092, "ReferringPhysicianAddress", "X", "person"),
    (0x0008, 0x0094, "ReferringPhysicianTelephoneNumbers", "X", "person"),
    (0x0008, 0x0096, "ReferringPhysicianIdentificationSequence", "X", "person"),
    (0x0008, 0x009C, "ConsultingPhysicianName", "Z", "person"),
    (0x0008, 0x1048, "PhysiciansOfRecord", "X", "person"),
    (0x0008, 0x1050, "PerformingPhysicianName", "X", "person"),
    (0x0008, 0x1060, "NameOfPhysiciansReadingStudy", "X", "person"),
    (0x0008, 0x1070, "OperatorsName", "X/Z/D", "person"),
    (0x0032, 0x1032, "RequestingPhysician", "X", "person"),
    (0x0040, 0x0006, "ScheduledPerformingPhysicianName", "X", "person"),
    (0x0040, 0xA075, "VerifyingObserverName", "D", "person"),
    (0x0040, 0xA123, "PersonName", "D", "person"),
    # equipment
    (0x0008, 0x1010, "StationName", "X/Z/D", "device"),
    (0x0018, 0x1000, "DeviceSerialNumber", "X/Z/D", "device"),
    (0x0018, 0x1002, "DeviceUID", "U", "device"),
    (0x0018, 0x1004, "PlateID", "X", "device"),
    (0x0018, 0x1005, "GeneratorID", "X", "device"),
    (0x0018, 0x1007, "CassetteID", "X", "device"),
    (0x0018, 0x1008, "GantryID", "X", "device"),
    (0x0018, 0x700A, "DetectorID", "X/D", "device"),
    # dates and times
    (0x0008, 0x0012, "InstanceCreationDate", "X/D", "date/time"),
    (0x0008, 0x0013, "InstanceCreationTime", "X/Z/D", "date/time"),
    (0x0008, 0x0020, "StudyDate", "Z", "date/time"),
    (0x0008, 0x0021, "SeriesDate", "X/D", "date/time"),
    (0x0008, 0x0022, "AcquisitionDate", "X/Z", "date/time"),
    (0x0008, 0x0023, "ContentDate", "Z/D", "date/time"),
    (0x0008, 0x002A, "AcquisitionDateTime", "X/D", "date/time"),
    (0x0008, 0x0030, "StudyTime", "Z", "date/time"),
    (0x0008, 0x0031, "SeriesTime", "X/D", "date/time"),
    (0x0008, 0x0032, "AcquisitionTime", "X/Z", "date/time"),
    (0x0008, 0x0033, "ContentTime", "Z/D", "date/time"),
    (0x0008, 0x0201, "TimezoneOffsetFromUTC", "X", "date/time"),
    (0x0038, 0x0020, "AdmittingDate", "X", "date/time"),
    (0x0038, 0x0021, "AdmittingTime", "X", "date/time"),
    (0x0040, 0x0244, "PerformedProcedureStepStartDate", "X", "date/time"),
    (0x0040, 0x0245, "PerformedProcedureStepStartTime", "X", "date/time"),
    (0x0040, 0x0250, "PerformedProcedureStepEndDate", "X", "date/time"),
    (0x0040, 0x0251, "PerformedProcedureStepEndTime", "X", "date/time"),
    # unique identifiers (U: replace by a new UID, consistently within the data set)
    (0x0002, 0x0003, "MediaStorageSOPInstanceUID", "U", "uid"),
    (0x0008, 0x0014, "InstanceCreatorUID", "U", "uid"),
    (0x0008, 0x0018, "SOPInstanceUID", "U", "uid"),
    (0x0008, 0x0058, "FailedSOPInstanceUIDList", "U", "uid"),
    (0x0008, 0x1155, "ReferencedSOPInstanceUID", "U", "uid"),
    (0x0020, 0x000D, "StudyInstanceUID", "U", "uid"),
    (0x0020, 0x000E, "SeriesInstanceUID", "U", "uid"),
    (0x0020, 0x0052, "FrameOfReferenceUID", "U", "uid"),
    (0x0020, 0x0200, "SynchronizationFrameOfReferenceUID", "U", "uid"),
    (0x0020, 0x9161, "ConcatenationUID", "U", "uid"),
    (0x0040, 0xA124, "UID", "U", "uid"),
    (0x0088, 0x0140, "StorageMediaFileSetUID", "U", "uid"),
    (0x3006, 0x0024, "ReferencedFrameOfReferenceUID", "U", "uid"),
)
PROFILE: dict[int, Rule] = {(g << 16) | e: Rule(g, e, k, a, c) for g, e, k, a, c in _TABLE}
# An attribute outside the excerpt whose VR can carry a name or a date is reported for review.
REVIEW = "review"
_REVIEW_VRS = {"PN": "person", "DA": "date/time", "DT": "date/time", "TM": "date/time"}


@dataclass(frozen=True)
class Finding:
    """One identifying attribute present in a file (its value is deliberately not kept)."""

    tag: str  # "(0010,0010)"
    keyword: str
    action: str  # Basic Profile action: X remove, Z zero length, D dummy, U new UID, ...
    category: str
    empty: bool  # present but empty: meets a Z action, still there for an X
    in_sequence: bool  # found inside a sequence item rather than at the top level


@dataclass(frozen=True)
class FileAudit:
    path: str
    findings: tuple[Finding, ...] = ()
    burned_in_annotation: str | None = None  # (0028,0301): "YES", "NO", or None when absent
    patient_identity_removed: str | None = None  # (0012,0062) as the file states it
    private_tags: int = 0
    error: str | None = None  # the file could not be read as DICOM

    def identifiers(self) -> tuple[Finding, ...]:
        """Findings with a value (an empty Z attribute already meets the profile)."""
        return tuple(f for f in self.findings if not f.empty)

    def keywords(self) -> set[str]:
        return {f.keyword for f in self.findings}

    @property
    def pixels_need_review(self) -> bool:
        """Burned-in text is possible unless the file says BurnedInAnnotation NO."""
        return self.burned_in_annotation != "NO"


@dataclass(frozen=True)
class AuditSummary:
    num_files: int
    num_unreadable: int
    num_with_identifiers: int
    num_with_private_tags: int
    burned_in_yes: int
    burned_in_absent: int  # no flag: the pixels must be checked (by eye or OCR)
    attribute_counts: dict[str, int] = field(default_factory=dict)  # keyword -> files with a value


@dataclass(frozen=True)
class DeidReport:
    files: list[FileAudit]
    summary: AuditSummary


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bytes | Sequence) and not isinstance(value, str):  # MultiValue, sequences
        return len(value) == 0
    return str(value).strip() == ""


def _special(tag: Any) -> Rule | None:
    """Rules that cover a whole family of tags: private groups, curves, overlay data / comments."""
    if tag.is_private:
        return Rule(tag.group, tag.element, "Private", "X", "private")
    if 0x5000 <= tag.group <= 0x50FF and tag.group % 2 == 0:
        return Rule(tag.group, tag.element, "CurveData", "X", "curve")
    if 0x6000 <= tag.group <= 0x60FF and tag.group % 2 == 0 and tag.element in (0x3000, 0x4000):
        return Rule(tag.group, tag.element, "OverlayDataOrComments", "X", "overlay")
    return None


def _walk(ds: Any, depth: int = 0) -> Iterator[tuple[Any, int]]:
    for elem in ds:
        yield elem, depth
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                yield from _walk(item, depth + 1)


def _rule_for(elem: Any) -> Rule | None:
    tag = elem.tag
    rule = PROFILE.get(int(tag)) or _special(tag)
    if rule is None and elem.VR in _REVIEW_VRS:
        rule = Rule(tag.group, tag.element, elem.keyword or "Unknown", REVIEW, _REVIEW_VRS[elem.VR])
    return rule


def audit_dataset(ds: Any, path: str = "") -> FileAudit:
    """Audit an in-memory pydicom Dataset (its file meta included, where it has one)."""
    findings: list[Finding] = []
    private = 0
    meta = getattr(ds, "file_meta", None)
    sources = ([(e, 0) for e in meta] if meta is not None else []) + list(_walk(ds))
    for elem, depth in sources:
        rule = _rule_for(elem)
        if rule is None:
            continue
        if rule.category == "private":
            private += 1
            continue
        findings.append(
            Finding(f"({rule.group:04X},{rule.element:04X})", rule.keyword, rule.action, rule.category,
                    _is_empty(elem.value), depth > 0)  # fmt: skip
        )
    if private:
        findings.append(Finding("(odd group)", "PrivateAttributes", "X", "private", False, False))
    flag = ds.get("BurnedInAnnotation")
    removed = ds.get("PatientIdentityRemoved")
    return FileAudit(
        path=path,
        findings=tuple(findings),
        burned_in_annotation=str(flag).strip().upper() if flag else None,
        patient_identity_removed=str(removed).strip().upper() if removed else None,
        private_tags=private,
    )


def audit_file(path: str | Path) -> FileAudit:
    """Audit one file's header (pixels are not read); an unreadable file is an audit with `error`."""
    from fedrad.data.readers.dicom_pixels import open_dicom

    try:
        return audit_dataset(open_dicom(path, stop_before_pixels=True), str(path))
    except Exception as exc:  # an audit reports every file, readable or not
        lines = str(exc).strip().splitlines()
        return FileAudit(str(path), error=lines[0] if lines else type(exc).__name__)


def audit_paths(paths: Iterable[str | Path]) -> list[FileAudit]:
    return [audit_file(p) for p in paths]


def summarize(audits: Iterable[FileAudit]) -> AuditSummary:
    audits = list(audits)
    readable = [a for a in audits if a.error is None]
    counts: Counter[str] = Counter()
    for audit in readable:
        counts.update({f.keyword for f in audit.identifiers()})
    return AuditSummary(
        num_files=len(audits),
        num_unreadable=len(audits) - len(readable),
        num_with_identifiers=sum(1 for a in readable if a.identifiers()),
        num_with_private_tags=sum(1 for a in readable if a.private_tags),
        burned_in_yes=sum(1 for a in readable if a.burned_in_annotation == "YES"),
        burned_in_absent=sum(1 for a in readable if a.burned_in_annotation is None),
        attribute_counts=dict(sorted(counts.items())),
    )


def audit_folder(folder: str | Path) -> DeidReport:
    """Audit every non-hidden file under `folder` (DICOM files often have no extension)."""
    root = Path(folder)
    if not root.exists():
        raise ValueError(f"{root}: no such file or folder")
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )  # fmt: skip
    files = audit_paths(paths)
    return DeidReport(files, summarize(files))


__all__ = [
    "PROFILE",
    "REVIEW",
    "AuditSummary",
    "DeidReport",
    "FileAudit",
    "Finding",
    "audit_dataset",
    "audit_file",
    "audit_folder",
    "audit_paths",
    "summarize",
]
