"""At training time: corpus splits -> sampling order -> CLM/MLM samples -> microbatches."""
