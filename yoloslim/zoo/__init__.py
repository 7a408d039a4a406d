"""Models this project can bring or write itself: the real COCO yolov3-tiny, the yolov5 topology."""
