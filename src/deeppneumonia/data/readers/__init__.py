"""One reader per image format (:mod:`.pil` for PNG / JPEG, :mod:`.dicom`) and the types they return (:mod:`.types`)."""
