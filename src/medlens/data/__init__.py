"""Reading, describing and splitting medical image data sets."""
