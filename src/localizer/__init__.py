"""Stage 1, the localizer: find every level's point and slice on studies without coordinates.

One heatmap model per series type, each trained with the generic loop; what each does is the plan
(`plan.PLAN`), derived from the competition constants:
- plan: which series types are used, in which order, for which conditions, with how many channels;
- data: the training store of resized slices with their labelled points, and the heatmap dataset;
- decode: from heatmaps to coordinate rows (levels assigned jointly head to feet; sides from 3D geometry);
- infer: test-time localization of whole studies with the trained models of one or more folds;
- errors: predicted against labelled points (mm, right slice);
- task: what the train loop trains (data, loss, validation decoding).
"""
