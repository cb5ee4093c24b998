$user = Get-StewardAdUser -Identity ([string]$p.identity)
$target = [string]$p.target_path
$parent = Get-StewardParentDn ([string]$user.DistinguishedName)
$StewardPrior = [ordered]@{ previous_parent = $parent }
if ($parent -eq $target) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $user) -Prior $StewardPrior)
}
Move-ADObject @StewardAd -Identity ([string]$user.DistinguishedName) -TargetPath $target -Confirm:$false
$after = Get-StewardAdUser -Identity ([string]$user.ObjectGUID)
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $after) -Prior $StewardPrior)
