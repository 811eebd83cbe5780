"""Reading committed result sets (run folders, kernel-bench files) and writing the HTML report."""
