$user = Find-StewardAdUser -Identity ([string]$p.identity)
if ($null -eq $user) {
    return (Out-StewardResult -Status 'unchanged' -Prior ([ordered]@{ existed = $false }))
}
$recycleBin = $false
$feature = @(Get-ADOptionalFeature @StewardAd -Filter 'Name -eq "Recycle Bin Feature"')
if ($feature.Count -gt 0 -and @($feature[0].EnabledScopes).Count -gt 0) { $recycleBin = $true }
$StewardPrior = [ordered]@{ existed = $true; recycle_bin = $recycleBin; user = (ConvertTo-StewardAdUser $user); member_of = @($user.MemberOf | ForEach-Object { [string]$_ }) }
try {
    Remove-ADUser @StewardAd -Identity ([string]$user.DistinguishedName) -Confirm:$false
} catch {
    # A user with child objects (Exchange ActiveSync device containers) is not a leaf object.
    if ([string]$_.Exception.Message -notmatch 'leaf object') { throw }
    Remove-ADObject @StewardAd -Identity ([string]$user.DistinguishedName) -Recursive -Confirm:$false
}
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ removed = $true; distinguished_name = [string]$user.DistinguishedName }) -Prior $StewardPrior)
