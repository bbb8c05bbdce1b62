"""The PS3.15 Annex E Basic Profile as applied by the export: one action per attribute, and the method codes."""

from __future__ import annotations

# PS3.15 Table E.1-1 gives each attribute an action: X remove, Z empty (or dummy), D dummy, U remap the
# UID, and combined actions (X/Z, X/D, X/Z/D, Z/D) whose choice depends on the attribute's Type in the
# object's IOD. medcbir has no IOD tables, so each combined action is resolved here once, to the
# strongest action that keeps every image IOD valid: removed (X) where no image IOD requires the
# attribute, emptied (Z) where one requires it as Type 2, a dummy value (D) where one requires it as
# Type 1. `dciodvfy` on every exported file of the pydicom test corpus checks these choices.

# X: removed wherever they are (top level and inside sequences).
REMOVE = frozenset({
    # patient
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "PatientAge", "PatientSize", "PatientWeight", "PatientBirthTime", "EthnicGroup", "Occupation",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "AdditionalPatientHistory", "PatientComments",
    "PatientInsurancePlanCodeSequence", "PatientReligiousPreference", "CountryOfResidence",
    "RegionOfResidence", "ResponsiblePerson", "ResponsibleOrganization", "PatientState", "MedicalAlerts",
    "Allergies", "SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "SpecialNeeds",
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "ReferencedPatientSequence",
    "ReferencedPatientPhotoSequence", "ReferencedPatientAliasSequence", "PatientPrimaryLanguageCodeSequence",
    "InsurancePlanIdentification", "PatientTransportArrangements", "PatientInstitutionResidence",
    # visit, admission, orders
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "AdmissionID", "IssuerOfAdmissionID",
    "IssuerOfAdmissionIDSequence", "AdmittingDate", "AdmittingTime", "DischargeDate", "DischargeTime",
    "DischargeDiagnosisDescription", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeID", "CurrentPatientLocation", "VisitComments", "ReasonForVisit",
    "ReasonForVisitCodeSequence", "RequestAttributesSequence", "RequestedProcedureID",
    "RequestedProcedureComments", "RequestedProcedureDescription", "RequestedProcedureLocation",
    "ReasonForTheRequestedProcedure", "ReasonForRequestedProcedureCodeSequence",
    "ReasonForTheImagingServiceRequest", "ImagingServiceRequestComments", "IssueDateOfImagingServiceRequest",
    "IssueTimeOfImagingServiceRequest", "OrderEnteredBy", "OrderEntererLocation", "OrderCallbackPhoneNumber",
    "OrderCallbackTelecomInformation", "RequestingPhysician", "RequestingService", "ReasonForStudy",
    "RequestedContrastAgent", "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
    # institution, staff, equipment, network
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence", "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence", "StationName", "StationAETitle", "RetrieveAETitle",
    "NetworkID", "DeviceUID", "DeviceDescription", "LongDeviceDescription", "GantryID", "GeneratorID",
    "CassetteID", "PlateID", "DetectorID", "DateOfManufacture", "DateOfInstallation",
    "DateOfLastCalibration", "TimeOfLastCalibration", "DateOfLastDetectorCalibration",
    "TimeOfLastDetectorCalibration", "ModifyingDeviceID", "UniqueDeviceIdentifier", "UDISequence",
    "TransducerIdentificationSequence", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorIdentificationSequence",
    "ScheduledPerformingPhysicianName", "ScheduledPerformingPhysicianIdentificationSequence",
    "HumanPerformerName", "HumanPerformerOrganization", "ActualHumanPerformersSequence",
    "ScheduledHumanPerformersSequence", "NamesOfIntendedRecipientsOfResults",
    "IntendedRecipientsOfResultsIdentificationSequence", "PersonAddress", "PersonTelephoneNumbers",
    "PersonTelecomInformation", "AuthorObserverSequence", "ParticipantSequence",
    "CustodialOrganizationSequence", "ContributingEquipmentSequence",
    # procedure steps, scheduling, locations
    "PerformedLocation", "PerformedStationName", "PerformedStationAETitle",
    "PerformedStationNameCodeSequence", "PerformedStationGeographicLocationCodeSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "CommentsOnThePerformedProcedureStep", "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepLocation", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime", "ScheduledStationName",
    "ScheduledStationAETitle", "ScheduledStudyLocation", "ScheduledStudyLocationAETitle",
    "ScheduledStudyStartDate", "ScheduledStudyStartTime", "ScheduledStudyStopDate", "ScheduledStudyStopTime",
    "StudyArrivalDate", "StudyArrivalTime", "StudyCompletionDate", "StudyCompletionTime",
    "StudyVerifiedDate", "StudyVerifiedTime", "StudyReadDate", "StudyReadTime", "StudyIDIssuer",
    # free text and descriptions (the Clean Descriptors Option is not applied: they go)
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments", "StudyComments",
    "AcquisitionComments", "AcquisitionDeviceProcessingDescription", "AcquisitionProtocolDescription",
    "DerivationDescription", "FrameComments", "ImagePresentationComments", "IdentifyingComments",
    "TextComments", "TextString", "CommentsOnRadiationDose", "ContrastBolusStartTime",
    "ContrastBolusStopTime", "ModifiedImageDescription", "ModifiedImageDate", "ModifiedImageTime",
    "LabelText", "BarcodeValue", "SlideIdentifier", "SpecimenAccessionNumber", "SpecimenShortDescription",
    "SpecimenDetailedDescription", "DateOfSecondaryCapture", "TimeOfSecondaryCapture", "OverlayDate",
    "OverlayTime", "CurveDate", "CurveTime", "TimezoneOffsetFromUTC", "IconImageSequence",
    # interpretation and results
    "InterpretationText", "InterpretationAuthor", "InterpretationRecorder", "InterpretationTranscriber",
    "InterpretationApproverSequence", "InterpretationDiagnosisDescription", "InterpretationID",
    "InterpretationIDIssuer", "PhysicianApprovingInterpretation", "Impressions", "ResultsComments",
    "ResultsID", "ResultsIDIssuer", "ResultsDistributionListSequence", "DistributionName",
    "DistributionAddress", "ContentSequence", "PersonName", "TextValue",
    # signatures, provenance of earlier changes
    "DigitalSignaturesSequence", "ReferencedDigitalSignatureSequence", "ReferencedSOPInstanceMACSequence",
    "MAC", "CertifiedTimestamp", "OriginalAttributesSequence", "ModifiedAttributesSequence",
    "NonconformingModifiedAttributesSequence", "DataSetTrailingPadding",
    # GPS (visible light photography)
    "GPSVersionID", "GPSLatitudeRef", "GPSLatitude", "GPSLongitudeRef", "GPSLongitude", "GPSAltitudeRef",
    "GPSAltitude", "GPSTimeStamp", "GPSSatellites", "GPSStatus", "GPSMeasureMode", "GPSDOP", "GPSSpeedRef",
    "GPSSpeed", "GPSTrackRef", "GPSTrack", "GPSImgDirectionRef", "GPSImgDirection", "GPSMapDatum",
    "GPSDestLatitudeRef", "GPSDestLatitude", "GPSDestLongitudeRef", "GPSDestLongitude",
    "GPSDestBearingRef", "GPSDestBearing", "GPSDestDistanceRef", "GPSDestDistance", "GPSProcessingMethod",
    "GPSAreaInformation", "GPSDateStamp", "GPSDifferential", "CameraOwnerName", "LensSerialNumber",
    "MakerNote",
})  # fmt: skip

# Z: kept, with an empty value (Type 2 somewhere; an empty value is valid for Type 2 and 3).
EMPTY = frozenset({
    "AccessionNumber", "StudyID", "PatientBirthDate", "PatientSex", "PatientSexNeutered",
    "ReferringPhysicianName", "ConsultingPhysicianName", "OperatorsName", "ContentCreatorName",
    "ReviewerName", "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    "AcquisitionContextSequence", "VerifyingObserverIdentificationCodeSequence",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialProtocolName", "ClinicalTrialTimePointID",
})  # fmt: skip

# D: a non-empty value is replaced by DUMMY (Type 1 in some IOD: the Enhanced General Equipment
# module requires Device Serial Number).
DUMMY_TEXT = "ANONYMIZED"
DUMMY = frozenset({"DeviceSerialNumber", "VerifyingObserverName", "VerifyingOrganization"})

# UIDs that name a kind of thing (a class, a syntax, a coding scheme), not a patient or an instance:
# kept. Every other UID is remapped (U), as is every UID under the standard's root `1.2.840.10008.`
# kept because the standard defined it.
STANDARD_UID_ROOT = "1.2.840.10008."
KEEP_UIDS = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile", "RelatedGeneralSOPClassUID",
    "OriginalSpecializedSOPClassUID", "SOPClassesInStudy", "CodingSchemeUID", "ContextUID",
    "MappingResourceUID", "ContextGroupExtensionCreatorUID", "ImplementationClassUID",
})  # fmt: skip

# Removed wherever they are: unknown meaning, so they cannot be cleaned (private tags go separately).
REMOVED_VRS = frozenset({"UN"})
# Person names and free text not named above: emptied (a name or a sentence in any other attribute).
EMPTIED_VRS = frozenset({"PN", "LT", "ST", "UT"})

# De-identification Method (LO, at most 64 characters): the short statement; the detail is in
# De-identification Method Code Sequence, PS3.16 CID 7050, one code per profile or option applied.
METHOD = "PS3.15 Basic Profile, Modified Dates Option (medcbir)"
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
